#!/usr/bin/env bash
# The same component on every host keygate exports for: cached-key req/s through keygate,
# `wasmtime serve`, Node.js (jco) and workerd (jco, experimental), one after the other, with
# nginx as origin and auth API on 127.0.0.1. See bench/README.md.
#
#   bench/hosts.sh
#
# Needs what the exports need: `wasmtime` 48 on PATH (or WASMTIME=<binary>; `cargo test`
# builds one in target/wasmtime-serve/release/), node and npm.
# Knobs: DURATION=10 WARMUP=3 CONNS=16 HOT_KEYS=100 KEYGATE=<binary>
DURATION=${DURATION:-10} WARMUP=${WARMUP:-3} CONNS=${CONNS:-16} HOT_KEYS=${HOT_KEYS:-100}
ORIGIN=19480 AUTH=19481 GATEWAY_PORT=19495
NEEDS="nginx wrk" NAME=hosts
. "$(dirname "$0")/lib.sh"
WASMTIME=${WASMTIME:-$(command -v wasmtime || echo "$ROOT/target/wasmtime-serve/release/wasmtime")}

start_backends '{"consumer":{"id":"c-$arg_apikey"}}'

cat > "$RUN/keygate.toml" <<EOF
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
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
hot_keys_lua > "$RUN/hot.lua"

# CPU ticks of a process and all its descendants (serve.sh runs node or workerd under it).
tree_ticks() {
    local t=0 p
    for p in $(pstree -p -T "$1" 2>/dev/null | grep -o '([0-9]*)' | tr -d '()'); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
measure() { # name pid
    local out rps p99 bad before after
    wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$RUN/hot.lua" "http://127.0.0.1:$GATEWAY_PORT/" >/dev/null 2>&1
    before=$(tree_ticks "$2")
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$RUN/hot.lua" "http://127.0.0.1:$GATEWAY_PORT/" | grep RESULT)
    after=$(tree_ticks "$2")
    read -r _ rps p99 bad _ <<< "$out"
    printf '%-22s %9s %8s %7s %10s\n' "$1" "$rps" "$p99" "$bad" \
        "$(awk -v d=$((after - before)) -v hz="$HZ" -v r="$rps" -v t="$DURATION" 'BEGIN { if (r > 0) printf "%.1f", d / hz * 1e6 / (r * t); else print "-" }')"
}
stop() { pkill -TERM -P "$1" 2>/dev/null || true; kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

printf '%-22s %9s %8s %7s %10s\n' host 'req/s' 'p99_ms' 'non2xx' 'us/req'
"$KEYGATE" serve --config "$RUN/keygate.toml" 2>"$RUN/keygate.log" & pid=$!
wait_http $GATEWAY_PORT; measure keygate $pid; stop $pid
for host in wasmtime node workerd; do
    if ! "$KEYGATE" export --for "$host" --config "$RUN/keygate.toml" --out "$RUN/$host" >"$RUN/export-$host.log" 2>&1; then
        printf '%-22s %s\n' "$host" "export failed: see $RUN/export-$host.log"
        continue
    fi
    PATH="$(dirname "$WASMTIME"):$PATH" setsid "$RUN/$host/serve.sh" "127.0.0.1:$GATEWAY_PORT" >"$RUN/$host.log" 2>&1 & pid=$!
    wait_http $GATEWAY_PORT
    measure "$host" $pid
    kill -TERM -- -"$pid" 2>/dev/null || stop $pid
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$GATEWAY_PORT") 2>/dev/null || break; sleep 0.1; done
done
echo "# keygate $("$KEYGATE" --version); run dir $RUN"
