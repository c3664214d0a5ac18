"""Cold start: time from starting `keygate serve` to its first answered request.

    python3 bench/cold_start.py [KEYGATE_BINARY] [RUNS]

The first run fills the precompiled-component cache (in a temporary directory); the others
measure a start with a precompiled component, which is what a restart or a new replica sees.
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/keygate"
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_answer(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(12).startswith(b"HTTP/1.1"):
                    return True
        except OSError:
            time.sleep(0.001)
    return False


with tempfile.TemporaryDirectory() as tmp:
    for run in range(runs + 1):
        port = free_port()
        config = os.path.join(tmp, "keygate.toml")
        with open(config, "w") as f:
            f.write(f'[server]\nlisten = "127.0.0.1:{port}"\n[guest]\ncache_dir = "{tmp}/cache"\n')
        started = time.monotonic()
        proc = subprocess.Popen([binary, "serve", "--config", config], stderr=subprocess.DEVNULL)
        ok = first_answer(port, started + 30)
        elapsed = (time.monotonic() - started) * 1000
        proc.terminate()
        proc.wait()
        label = "compile + start" if run == 0 else "precompiled start"
        print(f"{label}: first answer after {elapsed:.1f} ms" + ("" if ok else " (no answer!)"))
