#!/usr/bin/env bash
# keygate's own benchmark: keygate vs direct-to-origin vs nginx auth_request (+ proxy_cache),
# all on 127.0.0.1, with nginx as origin and auth API. See bench/README.md.
#
#   bench/run.sh                 # steady, invalid-key flood, miss storm
#   DURATION=20 bench/run.sh     # longer runs
#
# Knobs: DURATION=10 WARMUP=2 CONNS=64 HOT_KEYS=100 NKEYS=10000 STORM=500 KEYGATE=<binary>
#        KEYGATE_WORKERS=<n> (request threads; default: keygate's own, one per CPU)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} CONNS=${CONNS:-64}
HOT_KEYS=${HOT_KEYS:-100} NKEYS=${NKEYS:-10000} STORM=${STORM:-500}
ORIGIN=19080 AUTH=19081 NGINX_GW=19091 KEYGATE_PORT=19095

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need wrk; then
    [ "$(id -u)" -eq 0 ] || { echo "needs nginx and wrk (apt-get install nginx wrk)" >&2; exit 1; }
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx wrk >/dev/null
    if [ -d /run/systemd/system ]; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
fi
KEYGATE=${KEYGATE:-}
if [ -z "$KEYGATE" ]; then
    (cd "$ROOT" && cargo build --release -p keygate -q)
    KEYGATE=$ROOT/target/release/keygate
fi

RUN=$(mktemp -d "${TMPDIR:-/tmp}/keygate-bench.XXXXXX")
chmod 755 "$RUN"; mkdir -p "$RUN/tmp" "$RUN/cache"; chmod 777 "$RUN/tmp" "$RUN/cache"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

awk -v n="$NKEYS" 'BEGIN { for (i = 0; i < n; i++) printf "key%06d 1;\n", i }' > "$RUN/keys.map"
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
    map_hash_max_size 65536; map_hash_bucket_size 64;
    map \$arg_apikey \$key_valid { default 0; include $RUN/keys.map; }
    log_format call '\$status \$arg_apikey';
    server { listen 127.0.0.1:$ORIGIN backlog=4096; default_type application/json;
             location / { return 200 '{"ok":true}\n'; } }
    server { listen 127.0.0.1:$AUTH backlog=4096; access_log $RUN/auth.log call;
             location = /validate { if (\$key_valid = 0) { return 401; } return 200 '{}'; } }
    upstream origin { server 127.0.0.1:$ORIGIN; keepalive 64; }
    upstream authapi { server 127.0.0.1:$AUTH; keepalive 64; }
    proxy_cache_path $RUN/cache levels=1:2 keys_zone=auth:32m max_size=256m inactive=10m;
    # nginx-authreq: what users run today: auth_request with a cached verdict per key.
    server { listen 127.0.0.1:$NGINX_GW backlog=4096;
        location / { auth_request /_auth; proxy_http_version 1.1; proxy_set_header Connection "";
                     proxy_pass http://origin; }
        location = /_auth { internal; proxy_http_version 1.1; proxy_set_header Connection "";
            proxy_pass http://authapi/validate?apikey=\$http_apikey; proxy_pass_request_body off;
            proxy_set_header Content-Length ""; proxy_cache auth; proxy_cache_key \$http_apikey;
            proxy_cache_valid 200 5m; proxy_cache_valid 401 30s; proxy_cache_lock on; } }
}
EOF
cat > "$RUN/keygate.toml" <<EOF
[server]
listen = "127.0.0.1:$KEYGATE_PORT"
${KEYGATE_WORKERS:+workers = $KEYGATE_WORKERS}
[guest]
cache_dir = "$RUN/precompiled"
[auth_api]
url = "http://127.0.0.1:$AUTH/validate?apikey={key}"
[[services]]
name = "origin"
url = "http://127.0.0.1:$ORIGIN"
[[services.routes]]
paths = ["/"]
strip_path = false
EOF
nginx -c "$RUN/nginx.conf" -g 'daemon off;' & PIDS+=($!); NGINX_PID=$!
"$KEYGATE" serve --config "$RUN/keygate.toml" 2>"$RUN/keygate.log" & PIDS+=($!); KEYGATE_PID=$!
for port in $ORIGIN $AUTH $NGINX_GW $KEYGATE_PORT; do
    for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
done

cat > "$RUN/hot.lua" <<EOF
local n, i = $HOT_KEYS, 0
request = function() i = (i + 1) % n
  return wrk.format("GET", "/api/resource", { ["apikey"] = string.format("key%06d", i) }) end
EOF
cat > "$RUN/invalid.lua" <<'EOF'
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/resource", { ["apikey"] = string.format("bad%d-%d", math.random(1e9), math.random(1e9)) }) end
EOF
cat >> "$RUN/hot.lua" <<'EOF'
done = function(s, l) io.write(string.format("RESULT %.0f %.2f %d\n", s.requests / (s.duration / 1e6), l:percentile(99) / 1000, s.errors.status)) end
EOF
cat >> "$RUN/invalid.lua" <<'EOF'
done = function(s, l) io.write(string.format("RESULT %.0f %.2f %d\n", s.requests / (s.duration / 1e6), l:percentile(99) / 1000, s.errors.status)) end
EOF

cpu_ticks() { # pid: utime+stime of the process and its threads' children (nginx: master+workers)
    local t=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
HZ=$(getconf CLK_TCK)
printf '%-12s %-16s %9s %8s %9s %10s %7s\n' scenario target 'req/s' 'p99_ms' 'non2xx' 'gw_us/req' 'auth'
run() { # scenario name port pid lua
    local scenario=$1 name=$2 port=$3 pid=$4 lua=$5 before after calls0 out rps p99 bad us
    wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$RUN/$lua" "http://127.0.0.1:$port/api/resource" >/dev/null 2>&1
    before=$(cpu_ticks "$pid"); calls0=$(wc -l < "$RUN/auth.log")
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$RUN/$lua" "http://127.0.0.1:$port/api/resource" | grep RESULT)
    after=$(cpu_ticks "$pid")
    read -r _ rps p99 bad <<< "$out"
    us=$(awk -v d=$((after - before)) -v hz="$HZ" -v r="$rps" -v t="$DURATION" 'BEGIN { printf "%.1f", d / hz * 1e6 / (r * t) }')
    printf '%-12s %-16s %9s %8s %9s %10s %7s\n' "$scenario" "$name" "$rps" "$p99" "$bad" "$us" "$(( $(wc -l < "$RUN/auth.log") - calls0 ))"
}
run steady direct-origin $ORIGIN "$NGINX_PID" hot.lua
run steady nginx-authreq $NGINX_GW "$NGINX_PID" hot.lua
run steady keygate $KEYGATE_PORT "$KEYGATE_PID" hot.lua
run invalid nginx-authreq $NGINX_GW "$NGINX_PID" invalid.lua
run invalid keygate $KEYGATE_PORT "$KEYGATE_PID" invalid.lua

# Miss storm: STORM concurrent requests carrying one valid key never seen before.
for target in "nginx-authreq $NGINX_GW key$(printf %06d $((NKEYS - 1)))" "keygate $KEYGATE_PORT key$(printf %06d $((NKEYS - 2)))"; do
    read -r name port key <<< "$target"
    calls0=$(wc -l < "$RUN/auth.log")
    python3 "$HERE/storm.py" "$port" "$key" "$STORM" > "$RUN/storm.out"
    printf '%-12s %-16s %s, auth calls: %d\n' storm "$name" "$(cat "$RUN/storm.out")" $(( $(wc -l < "$RUN/auth.log") - calls0 ))
done
echo "# keygate $("$KEYGATE" --version), cold start (precompiled): see bench/README.md; run dir $RUN"
