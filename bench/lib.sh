# Shared by the bench scripts (sourced): tools, the keygate binary, the run directory, waiting
# for servers, CPU accounting. Before sourcing, set NEEDS (Debian packages the script runs)
# and NAME (the run directory's prefix).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

# Debian packages the script needs, installed when missing (as root), never started as
# system services.
missing=()
for package in ${NEEDS:-}; do
    program=$package
    [ "$package" = redis-server ] || [ "$package" = nginx ] || [ "$package" = wrk ] || program=
    if [ -n "$program" ] && ! command -v "$program" >/dev/null 2>&1; then missing+=("$package"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "needs ${missing[*]} (apt-get install ${missing[*]})" >&2; exit 1; }
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    if [ -d /run/systemd/system ]; then systemctl disable --now "${missing[@]}" >/dev/null 2>&1 || true; fi
fi

# The gateway under test: KEYGATE, or this checkout's release build.
KEYGATE=${KEYGATE:-}
if [ -z "$KEYGATE" ]; then
    (cd "$ROOT" && cargo build --release -p keygate -q)
    KEYGATE=$ROOT/target/release/keygate
fi

RUN=$(mktemp -d "${TMPDIR:-/tmp}/keygate-${NAME:-bench}.XXXXXX")
chmod 755 "$RUN"; mkdir -p "$RUN/tmp"; chmod 777 "$RUN/tmp"
# Processes to stop at exit.
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
# keygate binds before its component is compiled: ready is when it answers.
wait_http() { for _ in $(seq 600); do [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/")" != 000 ] && return; sleep 0.05; done; echo "nothing answers on port $1" >&2; exit 1; }

# CPU time (clock ticks) of a process, its threads included.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# An nginx http{} preamble writing its state into $RUN/$1 (origin, auth, …).
nginx_preamble() {
    mkdir -p "$RUN/$1"; chmod 777 "$RUN/$1"
    cat <<PREAMBLE
worker_processes 1;
pid $RUN/$1.pid;
error_log $RUN/$1-error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $RUN/$1/body; proxy_temp_path $RUN/$1/proxy;
    fastcgi_temp_path $RUN/$1/fcgi; uwsgi_temp_path $RUN/$1/uwsgi; scgi_temp_path $RUN/$1/scgi;
    client_max_body_size 1m;
    keepalive_requests 1000000;
PREAMBLE
}

# nginx as the origin ({"ok":true} on every path) and the auth API (GET /validate: 200 with
# this body) on $ORIGIN and $AUTH, started and waited for.
start_backends() { # auth-answer-body
    { nginx_preamble nginx; cat <<EOF
    server { listen 127.0.0.1:$ORIGIN backlog=4096; default_type application/json;
             location / { return 200 '{"ok":true}\n'; } }
    server { listen 127.0.0.1:$AUTH backlog=4096;
             location = /validate { return 200 '$1'; } }
}
EOF
    } > "$RUN/nginx.conf"
    nginx -c "$RUN/nginx.conf" -g 'daemon off;' & PIDS+=($!)
    wait_port "$ORIGIN"; wait_port "$AUTH"
}

# keygate on $KEYGATE_PORT in front of the origin on $ORIGIN, every path one route, the
# static consumer key $1; more route lines in $2 (e.g. `max_body_size = "1k"`).
static_key_config() { # key [route-lines]
    cat <<EOF
[server]
listen = "127.0.0.1:$KEYGATE_PORT"
[guest]
cache_dir = "$RUN/precompiled"
[[consumers]]
username = "bench"
keys = ["$1"]
[[services]]
name = "origin"
url = "http://127.0.0.1:$ORIGIN"
[[services.routes]]
paths = ["/"]
${2:-}
EOF
}

# A wrk script rotating $HOT_KEYS valid keys in header `apikey`; its `done` prints
# "RESULT req/s p99_ms non2xx requests".
hot_keys_lua() {
    cat <<EOF
local n, i = ${HOT_KEYS:-100}, 0
request = function() i = (i + 1) % n
  return wrk.format("GET", "/api/resource", { ["apikey"] = string.format("key%06d", i) }) end
done = function(s, l) io.write(string.format("RESULT %.0f %.2f %d %d\n", s.requests / (s.duration / 1e6), l:percentile(99) / 1000, s.errors.status, s.requests)) end
EOF
}
