#!/usr/bin/env bash
# A dependency's outage stays its own: keygate's req/s while the origin or the auth API is
# down, next to its rate for requests without a key (a 401 it makes itself, the cheapest answer
# it has). Target (issue 15): every outage row >= 0.8x the no-key row.
#
#   bench/outage.sh
#
# Rows: no key (401); origin refusing connections (valid cached key -> 502); auth API refusing
# connections (a fresh key per request -> 503 at once); auth API blackholed (accepts, never
# answers: the first calls time out, then the breaker answers at once); origin blackholed
# (every request waits `read_timeout`, 200 ms here: bounded by connections / timeout, reported
# as measured).
# Knobs: DURATION=10 WARMUP=2 CONNS=64 KEYGATE=<binary>
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} CONNS=${CONNS:-64}
ORIGIN=19280 AUTH=19281 DEAD=19282 HOLE=19283 KEYGATE_PORT=19295
NEEDS="nginx wrk" NAME=outage
. "$(dirname "$0")/lib.sh"

start_backends '{}'
# A blackhole: accepts every connection and never answers.
python3 - "$HOLE" <<'EOF' & PIDS+=($!)
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(4096)
held = []
while True:
    held.append(s.accept()[0])
EOF
wait_port $ORIGIN; wait_port $AUTH; wait_port $HOLE

cat > "$RUN/lua.lua" <<'EOF'
local mode = os.getenv("MODE")
math.randomseed(os.time())
request = function()
  if mode == "nokey" then return wrk.format("GET", "/api") end
  if mode == "fresh" then
    return wrk.format("GET", "/api", { ["apikey"] = string.format("k%d-%d", math.random(1e9), math.random(1e9)) })
  end
  return wrk.format("GET", "/api", { ["apikey"] = "cached-key" })
end
local statuses = {}
response = function(status) statuses[status] = (statuses[status] or 0) + 1 end
done = function(s, l)
  io.write(string.format("RESULT %.0f %.2f %d\n", s.requests / (s.duration / 1e6), l:percentile(99) / 1000, s.requests))
end
EOF

config() { # origin-port auth-port
    cat <<EOF
[server]
listen = "127.0.0.1:$KEYGATE_PORT"
[guest]
cache_dir = "$RUN/precompiled"
[auth_api]
url = "http://127.0.0.1:$2/validate?apikey={key}"
timeout = "200ms"
[[consumers]]
username = "bench"
keys = ["cached-key"]
[[services]]
name = "origin"
url = "http://127.0.0.1:$1"
connect_timeout = "200ms"
read_timeout = "200ms"
[[services.routes]]
paths = ["/"]
EOF
}

row() { # name mode origin-port auth-port
    local name=$1 pid before after out rps p99 total us
    config "$3" "$4" > "$RUN/$name.toml"
    "$KEYGATE" serve --config "$RUN/$name.toml" 2>"$RUN/$name.log" & pid=$!
    wait_http $KEYGATE_PORT
    MODE=$2 wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$RUN/lua.lua" "http://127.0.0.1:$KEYGATE_PORT/" >/dev/null 2>&1
    before=$(cpu_ticks $pid)
    out=$(MODE=$2 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$RUN/lua.lua" "http://127.0.0.1:$KEYGATE_PORT/" | grep RESULT)
    after=$(cpu_ticks $pid)
    read -r _ rps p99 total <<< "$out"
    us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$total" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    printf '%-28s %9s %8s %10s %8s\n' "$name" "$rps" "$p99" "$us" "$(wc -l < "$RUN/$name.log")"
    kill $pid; wait $pid 2>/dev/null || true
}
printf '%-28s %9s %8s %10s %8s\n' outage 'req/s' 'p99_ms' 'gw_us/req' 'log_lines'
row no-key-401 nokey $ORIGIN $AUTH
row origin-refused-502 cached $DEAD $AUTH
row auth-refused-503 fresh $ORIGIN $DEAD
row auth-blackholed-503 fresh $ORIGIN $HOLE
row origin-blackholed-504 cached $HOLE $AUTH
echo "# keygate $("$KEYGATE" --version); run dir $RUN"
