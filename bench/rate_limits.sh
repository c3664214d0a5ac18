#!/usr/bin/env bash
# What rate limiting costs: cached-key requests through keygate without a limit, with one
# `local` minute limit on every request, with the same limit on Redis (`policy = "redis"`,
# redis-server on the same box), and a flood from one client over its limit (every request a
# 429). nginx as origin and auth API, all on 127.0.0.1. See bench/README.md.
#
#   bench/rate_limits.sh               # one run of each variant
#   RUNS=3 bench/rate_limits.sh        # the median of three runs is what bench/README.md reports
#
# Targets (issue 12): local >= 0.9x the unlimited req/s; redis >= 0.6x with 1 Redis round trip
# per request; a 429 costs no more CPU than a cached 200.
# Knobs: DURATION=10 WARMUP=2 CONNS=64 HOT_KEYS=100 RUNS=1 KEYGATE=<binary>
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} CONNS=${CONNS:-64} HOT_KEYS=${HOT_KEYS:-100}
RUNS=${RUNS:-1}
ORIGIN=19180 AUTH=19181 KEYGATE_PORT=19195 REDIS_PORT=19379

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk || ! need redis-server; then
    [ "$(id -u)" -eq 0 ] || { echo "needs nginx, wrk and redis-server (apt-get install nginx wrk redis-server)" >&2; exit 1; }
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx wrk redis-server >/dev/null
    if [ -d /run/systemd/system ]; then systemctl disable --now nginx redis-server >/dev/null 2>&1 || true; fi
fi
KEYGATE=${KEYGATE:-}
if [ -z "$KEYGATE" ]; then
    (cd "$ROOT" && cargo build --release -p keygate -q)
    KEYGATE=$ROOT/target/release/keygate
fi

RUN=$(mktemp -d "${TMPDIR:-/tmp}/keygate-rl-bench.XXXXXX")
chmod 755 "$RUN"; mkdir -p "$RUN/tmp"; chmod 777 "$RUN/tmp"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

cat > "$RUN/nginx.conf" <<EOF
worker_processes 1;
pid $RUN/nginx.pid;
error_log $RUN/nginx-error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $RUN/tmp/body; proxy_temp_path $RUN/tmp/proxy;
    fastcgi_temp_path $RUN/tmp/fcgi; uwsgi_temp_path $RUN/tmp/uwsgi; scgi_temp_path $RUN/tmp/scgi;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$ORIGIN backlog=4096; default_type application/json;
             location / { return 200 '{"ok":true}\n'; } }
    server { listen 127.0.0.1:$AUTH backlog=4096;
             location = /validate { return 200 '{"consumer":{"id":"c-\$arg_apikey"}}'; } }
}
EOF
nginx -c "$RUN/nginx.conf" -g 'daemon off;' & PIDS+=($!)
redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no >"$RUN/redis.log" 2>&1 & PIDS+=($!)
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
wait_port $ORIGIN; wait_port $AUTH; wait_port $REDIS_PORT

cat > "$RUN/hot.lua" <<EOF
local n, i = $HOT_KEYS, 0
request = function() i = (i + 1) % n
  return wrk.format("GET", "/api/resource", { ["apikey"] = string.format("key%06d", i) }) end
done = function(s, l) io.write(string.format("RESULT %.0f %.2f %d %d\n", s.requests / (s.duration / 1e6), l:percentile(99) / 1000, s.errors.status, s.requests)) end
EOF

# A keygate config: no limit, or one global rate-limiting instance with these config lines.
config() { # limit-lines
    cat <<EOF
[server]
listen = "127.0.0.1:$KEYGATE_PORT"
[guest]
cache_dir = "$RUN/precompiled"
[auth_api]
url = "http://127.0.0.1:$AUTH/validate?apikey={key}"
[[services]]
name = "origin"
url = "http://127.0.0.1:$ORIGIN"
[[services.routes]]
name = "all"
paths = ["/"]
strip_path = false
EOF
    if [ -n "$1" ]; then printf '[[plugins]]\nname = "rate-limiting"\n[plugins.config]\n%b\n' "$1"; fi
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
evals() { redis-cli -p $REDIS_PORT INFO commandstats | awk -F'[:=,]' '/^cmdstat_eval(sha)?:/ { n += $3 } END { print n + 0 }'; }
HZ=$(getconf CLK_TCK)

# One variant: start keygate with its config, warm up, measure, stop. Prints one line.
variant() { # name limit-lines
    local name=$1 before after calls0 out rps p99 bad total us trips pid
    config "$2" > "$RUN/$name.toml"
    "$KEYGATE" serve --config "$RUN/$name.toml" 2>"$RUN/$name.log" & pid=$!
    wait_port $KEYGATE_PORT
    wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$RUN/hot.lua" "http://127.0.0.1:$KEYGATE_PORT/" >/dev/null 2>&1
    before=$(cpu_ticks $pid); calls0=$(evals)
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$RUN/hot.lua" "http://127.0.0.1:$KEYGATE_PORT/" | grep RESULT)
    after=$(cpu_ticks $pid)
    read -r _ rps p99 bad total <<< "$out"
    us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$total" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    trips=$(awk -v e=$(( $(evals) - calls0 )) -v n="$total" 'BEGIN { printf "%.2f", e / n }')
    printf '%-10s %-22s %9s %8s %9s %10s %13s\n' "$run" "$name" "$rps" "$p99" "$bad" "$us" "$trips"
    kill $pid; wait $pid 2>/dev/null || true
}

printf '%-10s %-22s %9s %8s %9s %10s %13s\n' run variant 'req/s' 'p99_ms' 'non2xx' 'gw_us/req' 'redis/request'
for run in $(seq "$RUNS"); do
    variant no-limit ""
    variant local-minute 'minute = 1000000000\nlimit_by = "consumer"'
    variant redis-minute "minute = 1000000000\nlimit_by = \"consumer\"\npolicy = \"redis\"\nredis = { host = \"127.0.0.1\", port = $REDIS_PORT }"
    # Every client comes from 127.0.0.1: after the first request, every request is a 429.
    variant local-flood-429 'second = 1\nlimit_by = "ip"'
done
echo "# keygate $("$KEYGATE" --version); run dir $RUN"
