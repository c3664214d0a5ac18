#!/usr/bin/env bash
# The project's test command: installs what the tests need from the system when it is
# missing, then runs every test of the workspace.
#
# - redis-server (Debian's package): the `policy = "redis"` rate-limit and `[cluster]` tests
#   start their own on a free port of 127.0.0.1.
# Everything else comes through cargo and rustup: the toolchain and wasm target that
# rust-toolchain.toml pins (the host's build script adds the target when missing), and the
# `wasmtime serve` the portability tests build from tests/wasmtime-serve.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then
    echo "tests/run.sh: installing redis-server (the Redis tests start their own)" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends redis-server
    # The package starts a system-wide server on 6379; the tests use their own.
fi

cargo test "$@"
