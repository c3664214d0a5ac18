#!/usr/bin/env bash
# Slow heads cost little (issue 14): keygate's p99 for 64 keep-alive clients alone, then again
# while SLOW connections (default 1000) each send their request head one byte every few
# seconds (slowloris). Target: p99 under attack <= 2x p99 alone.
#
#   bench/slowloris.sh
#
# keygate runs its defaults (header_read_timeout 30 s, so each slow connection is closed after
# 30 s and the attacker opens a new one; max_connections 10 000) in front of an nginx origin,
# with a static consumer key. Printed: req/s and p99 per phase, the gateway's CPU per request,
# its descriptors and RSS, how many slow connections were open and how many the gateway closed.
# Rounds alternate (alone, attacked) so that the shared box's other load shows as spread between
# rounds; the ratio is of the medians.
# Knobs: DURATION=10 WARMUP=2 ROUNDS=3 CONNS=64 SLOW=1000 DRIP=5 (seconds between two bytes of
# one slow connection) KEYGATE=<binary>
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} ROUNDS=${ROUNDS:-3} CONNS=${CONNS:-64}
SLOW=${SLOW:-1000} DRIP=${DRIP:-5}
ORIGIN=19580 AUTH=19581 KEYGATE_PORT=19595
NEEDS="nginx wrk" NAME=slowloris
. "$(dirname "$0")/lib.sh"

# The attacker and keygate need a descriptor per connection, and more.
[ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge $((SLOW + CONNS + 512)) ] \
    || { echo "the open-file hard limit ($(ulimit -Hn)) is below $((SLOW + CONNS + 512))" >&2; exit 1; }
ulimit -Sn "$(ulimit -Hn)"

start_backends '{}'

static_key_config bench-key > "$RUN/keygate.toml"

cat > "$RUN/wrk.lua" <<'EOF'
request = function() return wrk.format("GET", "/api", { ["apikey"] = "bench-key" }) end
done = function(s, l)
  io.write(string.format("RESULT %.0f %.2f %d %d\n", s.requests / (s.duration / 1e6),
    l:percentile(99) / 1000, s.requests, s.errors.status + s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout))
end
EOF

# The attacker: SLOW connections, each sending its head a byte every DRIP seconds (spread
# evenly), reconnecting when the gateway closes one. Writes "open closed" to $RUN/slow.state
# every second.
cat > "$RUN/slowloris.py" <<'EOF'
import os, socket, sys, time
port, n, drip, state = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
HEAD = b"GET /api HTTP/1.1\r\nhost: bench\r\napikey: bench-key\r\nx-slow: " + b"s" * 100000
def connect():
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    return [s, 0]
conns = [connect() for _ in range(n)]
closed, last = 0, 0.0
while True:
    start = time.monotonic()
    for i, c in enumerate(conns):
        try:
            c[0].send(HEAD[c[1]:c[1] + 1])
            c[1] += 1
        except OSError:
            closed += 1
            c[0].close()
            conns[i] = connect()
        now = time.monotonic()
        if now - last >= 1:
            with open(state + ".tmp", "w") as f:
                f.write(f"{len(conns)} {closed}\n")
            os.replace(state + ".tmp", state)
            last = now
        # One byte per connection per `drip` seconds, spread over the round.
        pause = start + drip * (i + 1) / n - time.monotonic()
        if pause > 0:
            time.sleep(pause)
EOF

"$KEYGATE" serve --config "$RUN/keygate.toml" 2>"$RUN/keygate.log" & GW=$!; PIDS+=($GW)
wait_http $KEYGATE_PORT

phase() { # row-name alone|attack
    local before after out rps p99 total errors us
    wrk -t1 -c"$CONNS" -d"${WARMUP}s" -s "$RUN/wrk.lua" "http://127.0.0.1:$KEYGATE_PORT/" >/dev/null 2>&1
    before=$(cpu_ticks $GW)
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$RUN/wrk.lua" "http://127.0.0.1:$KEYGATE_PORT/" | grep RESULT)
    after=$(cpu_ticks $GW)
    read -r _ rps p99 total errors <<< "$out"
    us=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$total" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }')
    printf '%-22s %9s %8s %7s %10s %6s %8s\n' "$1" "$rps" "$p99" "$errors" "$us" \
        "$(ls /proc/$GW/fd | wc -l)" "$(awk '/VmRSS/ {print $2}' /proc/$GW/status)"
    echo "$p99" >> "$RUN/p99.$2"
}
fds() { ls /proc/$GW/fd | wc -l; }

# Alternating rounds, so that a change in the machine's other load (the box is shared) shows
# as a spread between rounds rather than as the attack's effect.
printf '%-22s %9s %8s %7s %10s %6s %8s\n' phase 'req/s' 'p99_ms' errors 'gw_us/req' fds rss_kb
for round in $(seq "$ROUNDS"); do
    phase "alone-$round" alone
    BASE=$(fds)
    rm -f "$RUN/slow.state"
    python3 "$RUN/slowloris.py" $KEYGATE_PORT "$SLOW" "$DRIP" "$RUN/slow.state" & SLOWPID=$!; PIDS+=($SLOWPID)
    # Ready when every slow connection is open and the gateway holds them (a descriptor each).
    for _ in $(seq 600); do
        [ -s "$RUN/slow.state" ] && [ "$(fds)" -ge $((BASE + SLOW)) ] && break
        sleep 0.1
    done
    [ "$(fds)" -ge $((BASE + SLOW)) ] || { echo "the gateway never held $SLOW slow connections" >&2; exit 1; }
    phase "slowloris-$round" attack
    read -r open closed < "$RUN/slow.state"
    echo "# round $round: slow connections open $open, closed by the gateway $closed (header_read_timeout 30s)"
    kill "$SLOWPID"; wait "$SLOWPID" 2>/dev/null || true
    for _ in $(seq 600); do [ "$(fds)" -le $((BASE + 16)) ] && break; sleep 0.1; done
done

median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
awk -v a="$(median "$RUN/p99.alone")" -v b="$(median "$RUN/p99.attack")" \
    'BEGIN { r = b / a; printf "median p99: alone %.2f ms, with slowloris %.2f ms, ratio %.2f (target <= 2.00): %s\n", a, b, r, (r <= 2 ? "met" : "NOT met") }'
echo "# keygate $("$KEYGATE" --version); run dir $RUN; load average $(cut -d' ' -f1-3 /proc/loadavg)"
