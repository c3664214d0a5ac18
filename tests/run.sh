#!/usr/bin/env bash
# The project's test command: installs what the tests need from the system when it is
# missing, then runs every test of the workspace.
#
# - redis-server (Debian's package): the `policy = "redis"` rate-limit and `[cluster]` tests
#   start their own on a free port of 127.0.0.1.
# - node and npm (the system's nodejs and npm packages; Node.js 20.19+): the Node.js and workerd
#   export tests run the exports with them. The npm packages those exports pin
#   (host/src/export/js/{node,workerd}/package-lock.json: jco-transpile, preview2-shim,
#   workerd) are installed here once, with `npm ci`, into target/js-export/ (again only when a
#   lock file changes): the tests' only traffic to the npm registry.
# - curl and openssl: the TLS and HTTP/2 tests (certificates made per test, curl --http2).
# - chromium (Debian's package): tests/dashboard.rs renders the admin dashboard headless and
#   keeps its screenshots under target/ (fonts-liberation: text in them, not boxes).
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

for tool in curl openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "tests/run.sh: installing $tool (the TLS and HTTP/2 tests make certificates with openssl and talk to keygate with curl --http2)" >&2
        if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
        "${SUDO[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$tool" ca-certificates
    fi
done

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    echo "tests/run.sh: installing chromium (tests/dashboard.rs loads the admin page in it, headless)" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-liberation
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "tests/run.sh: installing nodejs and npm (the Node.js and workerd export tests)" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends nodejs npm
fi
for js_host in node workerd; do
    js_dir="${CARGO_TARGET_DIR:-target}/js-export/$js_host"
    js_lock="host/src/export/js/$js_host/package-lock.json"
    if ! cmp -s "$js_lock" "$js_dir/node_modules/.keygate-package-lock.json"; then
        echo "tests/run.sh: installing the $js_host export's pinned npm packages into $js_dir" >&2
        mkdir -p "$js_dir"
        cp "host/src/export/js/$js_host/package.json" "$js_lock" "$js_dir/"
        (cd "$js_dir" && npm ci --no-audit --no-fund --loglevel=error)
        cp "$js_lock" "$js_dir/node_modules/.keygate-package-lock.json"
    fi
done

cargo test "$@"
