#!/usr/bin/env bash
# What each hostile request shape costs keygate: CPU per refusal, next to a plain request
# without a key (the gateway's own 401) and a forwarded request with a valid key, each sent
# on a new connection (refusals close theirs, so every row pays a connect and an accept).
#
#   bench/hostile.sh                 # N=4000 requests per shape, 8 clients at once
#
# Rows: the two references; a header line over 8 KiB; a head over 32 KiB (many 4 KiB lines);
# 101 header lines; a request target over 8 KiB; Content-Length with Transfer-Encoding; two
# Content-Lengths; obs-fold; a declared body over the route's max_body_size (1k, body not sent).
# Printed: the status the shape got, requests per second, keygate's CPU µs per request.
# Knobs: N=4000 CLIENTS=8 KEYGATE=<binary>
N=${N:-4000} CLIENTS=${CLIENTS:-8}
ORIGIN=19480 AUTH=19481 KEYGATE_PORT=19495
NEEDS="nginx" NAME=hostile
. "$(dirname "$0")/lib.sh"

start_backends '{}'
static_key_config valid-key 'max_body_size = "1k"' > "$RUN/keygate.toml"
"$KEYGATE" serve --config "$RUN/keygate.toml" 2>"$RUN/keygate.log" & KEYGATE_PID=$!; PIDS+=($KEYGATE_PID)
wait_http $KEYGATE_PORT

# One shape: N requests from CLIENTS threads, each on its own connection, read to the close or
# the first answer; prints "status req/s".
cat > "$RUN/send.py" <<'EOF'
import socket, sys, threading, time
port, n, clients, shape = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
host = f"127.0.0.1:{port}"
line = "x-filler: " + "a" * 4000 + "\r\n"
shapes = {
    "no-key": "GET / HTTP/1.1\r\nhost: %s\r\nconnection: close\r\n\r\n",
    "valid-key": "GET / HTTP/1.1\r\nhost: %s\r\napikey: valid-key\r\nconnection: close\r\n\r\n",
    "line-over-8k": "GET / HTTP/1.1\r\nhost: %s\r\nx-big: " + "a" * 9000 + "\r\n\r\n",
    "head-over-32k": "GET / HTTP/1.1\r\nhost: %s\r\n" + line * 9 + "\r\n",
    "101-header-lines": "GET / HTTP/1.1\r\nhost: %s\r\n" + "".join(f"x-h{i}: v\r\n" for i in range(101)) + "\r\n",
    "target-over-8k": "GET /" + "a" * 9000 + " HTTP/1.1\r\nhost: %s\r\n\r\n",
    "cl-with-te": "POST / HTTP/1.1\r\nhost: %s\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-cls": "POST / HTTP/1.1\r\nhost: %s\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
    "obs-fold": "GET / HTTP/1.1\r\nhost: %s\r\nx-folded: a\r\n b\r\n\r\n",
    "body-over-limit": "POST / HTTP/1.1\r\nhost: %s\r\napikey: valid-key\r\ncontent-length: 100000\r\n\r\n",
}
request = (shapes[shape] % host).encode()
statuses = {}
lock = threading.Lock()
def client(count):
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        try:
            s.sendall(request)
        except OSError:
            pass  # refused before all of it was read: the answer is what counts
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        s.close()
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
start = time.time()
threads = [threading.Thread(target=client, args=(n // clients,)) for _ in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.time() - start
print(",".join(f"{k}x{v}" for k, v in sorted(statuses.items())), f"{(n // clients) * clients / elapsed:.0f}")
EOF

printf '%-18s %-16s %8s %10s\n' shape status req/s gw_us/req
for shape in no-key valid-key line-over-8k head-over-32k 101-header-lines target-over-8k cl-with-te two-cls obs-fold body-over-limit; do
    python3 "$RUN/send.py" $KEYGATE_PORT 200 2 "$shape" > /dev/null   # warm-up
    before=$(cpu_ticks $KEYGATE_PID)
    read -r status rps < <(python3 "$RUN/send.py" $KEYGATE_PORT "$N" "$CLIENTS" "$shape")
    after=$(cpu_ticks $KEYGATE_PID)
    us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$N" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    printf '%-18s %-16s %8s %10s\n' "$shape" "$status" "$rps" "$us"
done
echo "# keygate $("$KEYGATE" --version); log lines: $(wc -l < "$RUN/keygate.log"); run dir $RUN"
