#!/usr/bin/env bash
# The soak (not in CI): DURATION seconds (default 1800) of mixed, paced load on one keygate —
# cached keys, new keys, invalid keys, 64 KiB uploads, a slow route that sometimes times out —
# with a hot swap every minute and the auth API down for 30 s every 3 minutes (swaps never
# touch [auth_api] or [key_auth]). Every minute it samples keygate's RSS, open file descriptors
# and guest instances; at the end it prints each load's status counts and checks:
#   - cached keys: every request 200 (the auth API's outages are covered by the cache and
#     stale_if_error), uploads likewise; the slow route's 504s are expected and not counted;
#   - RSS at the end within 10 % of its value after the first minute;
#   - open file descriptors within +-10 of that value;
#   - guest instances alive never above the connections (+2): none leak.
#
#   bench/soak.sh                 # 30 minutes
#   DURATION=300 bench/soak.sh    # a quicker look
DURATION=${DURATION:-1800}
ORIGIN=19380 AUTH=19381 SLOW=19382 KEYGATE_PORT=19395 ADMIN=19396
NEEDS="nginx wrk" NAME=soak
. "$(dirname "$0")/lib.sh"
# The auth API is stopped and started during the run: its pid is kept apart.
AUTH_PID=
# Killed before cleanup, whose `wait` would otherwise wait for it.
trap '[ -z "$AUTH_PID" ] || kill "$AUTH_PID" 2>/dev/null || true; cleanup' EXIT

nginx_conf() { # name body
    nginx_preamble "$1"
    printf '    %s\n}\n' "$2"
}
nginx_conf origin "server { listen 127.0.0.1:$ORIGIN backlog=4096; default_type application/json;
    location / { return 200 '{\"ok\":true}\n'; } }" > "$RUN/origin.conf"
nginx_conf auth "map \$arg_apikey \$valid { ~^key 1; default 0; }
    server { listen 127.0.0.1:$AUTH backlog=4096;
    location = /validate { if (\$valid = 0) { return 401; } return 200 '{\"consumer\":{\"username\":\"c-\$arg_apikey\"}}'; } }" > "$RUN/auth.conf"
nginx -c "$RUN/origin.conf" -g 'daemon off;' & PIDS+=($!)
start_auth() { nginx -c "$RUN/auth.conf" -g 'daemon off;' & AUTH_PID=$!; }
start_auth
# The slow origin: half a second per answer, 2 s for one in ten (past keygate's 1 s timeout).
python3 - "$SLOW" <<'EOF' & PIDS+=($!)
import http.server, random, sys, time
class Slow(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(2.0 if random.random() < 0.1 else 0.5)
        body = b'{"slow":true}\n'
        try:
            self.send_response(200); self.send_header("content-length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # keygate gave up first (its 1 s read_timeout): the 504 the soak expects
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Slow).serve_forever()
EOF
wait_port $ORIGIN; wait_port $AUTH; wait_port $SLOW

# Two configs that differ only in an extra route: each minute's swap alternates them.
config() { # extra-route-path
    cat <<EOF
[server]
listen = "127.0.0.1:$KEYGATE_PORT"
admin_listen = "127.0.0.1:$ADMIN"
[guest]
cache_dir = "$RUN/precompiled"
[auth_api]
url = "http://127.0.0.1:$AUTH/validate?apikey={key}"
timeout = "500ms"
cache_ttl = "60s"
negative_ttl = "30s"
stale_if_error = "1h"
# Small enough for the new and invalid keys to fill it in the first minute, so what the RSS
# check sees is the gateway's own memory, not a cache still filling as designed.
cache_capacity = 5000
[[services]]
name = "origin"
url = "http://127.0.0.1:$ORIGIN"
[[services.routes]]
name = "fast"
paths = ["/fast"]
[[services.routes]]
name = "$1"
paths = ["/$1"]
[[services]]
name = "slow"
url = "http://127.0.0.1:$SLOW"
read_timeout = "1s"
[[services.routes]]
name = "slow"
paths = ["/slow"]
EOF
}
config extra-a > "$RUN/keygate.toml"
"$KEYGATE" serve --config "$RUN/keygate.toml" 2>"$RUN/keygate.log" & KEYGATE_PID=$!; PIDS+=($KEYGATE_PID)
wait_http $KEYGATE_PORT; wait_port $ADMIN

# One wrk per kind of traffic, each connection pacing itself with wrk's delay().
lua() { # method path key-expr body-bytes delay-ms
    cat <<EOF
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} ; math.randomseed(os.time() + math.random(1000)) end
local body = string.rep("x", $4)
function request()
  local key = $3
  local headers = { ["apikey"] = key }
  if $4 > 0 then return wrk.format("$1", "$2", headers, body) end
  return wrk.format("$1", "$2", headers)
end
function delay() return $5 end
function response(status) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary)
  local line = ""
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do line = line .. " " .. status .. "=" .. n end
  end
  local e = summary.errors
  io.write(string.format("STATUSES%s errors=%d\n", line, e.connect + e.read + e.write + e.timeout))
end
EOF
}
lua GET /fast 'string.format("key%04d", math.random(0, 99))' 0 5 > "$RUN/cached.lua"
lua GET /fast 'string.format("key-new-%d", math.random(1e9))' 0 20 > "$RUN/new.lua"
lua GET /fast 'string.format("bad-%d", math.random(1e9))' 0 20 > "$RUN/invalid.lua"
lua POST /fast 'string.format("key%04d", math.random(0, 99))' 65536 50 > "$RUN/upload.lua"
lua GET /slow 'string.format("key%04d", math.random(0, 99))' 0 100 > "$RUN/slow.lua"
LOADS="cached:4 new:2 invalid:2 upload:2 slow:4"
CONNECTIONS=0
for kind in $LOADS; do CONNECTIONS=$(( CONNECTIONS + ${kind##*:} )); done
for kind in $LOADS; do
    name=${kind%%:*} conns=${kind##*:}
    wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s -s "$RUN/$name.lua" "http://127.0.0.1:$KEYGATE_PORT/" > "$RUN/$name.out" 2>&1 &
    PIDS+=($!)
done

metric() { curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
sample() { # minute
    local rss fds created alive
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$KEYGATE_PID/status")
    fds=$(ls "/proc/$KEYGATE_PID/fd" | wc -l)
    created=$(metric keygate_guest_instances_created_total)
    alive=$(metric keygate_guest_instances_alive)
    printf '%6s %10s %5s %10s %6s %12s\n' "$1" "$rss" "$fds" "${created:-0}" "${alive:-0}" "$(metric keygate_requests_in_flight)"
    echo "$1 $rss $fds ${alive:-0}" >> "$RUN/samples"
}
printf '%6s %10s %5s %10s %6s %12s\n' minute rss_kib fds created alive in_flight
start=$(date +%s); minute=0; extra=extra-a
while [ $(( $(date +%s) - start )) -lt "$DURATION" ]; do
    sleep 10
    elapsed=$(( $(date +%s) - start ))
    # The auth API: down for 30 s every 3 minutes.
    if [ $(( elapsed % 180 )) -ge 120 ] && [ $(( elapsed % 180 )) -lt 150 ]; then
        if [ -n "$AUTH_PID" ]; then kill "$AUTH_PID"; wait "$AUTH_PID" 2>/dev/null || true; AUTH_PID=; fi
    elif [ -z "$AUTH_PID" ]; then
        start_auth
    fi
    # Sampled only while the load runs (its last connections close when wrk ends).
    if [ $(( elapsed / 60 )) -gt "$minute" ] && [ "$elapsed" -lt "$DURATION" ]; then
        minute=$(( elapsed / 60 ))
        sample "$minute"
        # The hot swap: the file watcher reloads the changed config.
        if [ "$extra" = extra-a ]; then extra=extra-b; else extra=extra-a; fi
        config "$extra" > "$RUN/keygate.toml"
        curl -s -X POST "http://127.0.0.1:$ADMIN/admin/reload" > /dev/null
    fi
done
wait "${PIDS[@]: -5}" 2>/dev/null || true
echo
for name in cached new invalid upload slow; do
    printf '%-8s %s\n' "$name" "$(grep STATUSES "$RUN/$name.out" | sed 's/STATUSES//')"
done
echo "reloads: $(grep -c 'reloaded' "$RUN/keygate.log" || true) done, $(grep -c 'reload rejected' "$RUN/keygate.log" || true) rejected"
read -r _ rss1 fds1 alive1 < <(sed -n 1p "$RUN/samples")
read -r _ rssN fdsN aliveN < <(tail -n1 "$RUN/samples")
alive_max=$(awk '$4 > m { m = $4 } END { print m + 0 }' "$RUN/samples")
failed_cached=$(grep STATUSES "$RUN/cached.out" "$RUN/upload.out" | tr ' ' '\n' | awk -F= '/^[0-9]+=/ && $1 != 200 { n += $2 } /^errors=/ { n += $2 } END { print n + 0 }')
echo "cached and upload requests that did not get a 200: $failed_cached"
awk -v a="$rss1" -v b="$rssN" 'BEGIN { printf "RSS after minute 1: %d KiB, at the end: %d KiB (%+.1f %%)\n", a, b, (b - a) * 100 / a }'
echo "open fds after minute 1: $fds1, at the end: $fdsN"
echo "guest instances alive after minute 1: $alive1, at the end: $aliveN, at most: $alive_max (bound: $CONNECTIONS connections + 2)"
ok=1
[ "$failed_cached" -eq 0 ] || ok=0
awk -v a="$rss1" -v b="$rssN" 'BEGIN { exit !(b <= a * 1.1 && b >= a * 0.9) }' || ok=0
[ $(( fdsN - fds1 )) -le 10 ] && [ $(( fds1 - fdsN )) -le 10 ] || ok=0
# Instances live only while a request needs one or idle in the pool: never more than the
# connections (one request each) and a reload's trial.
[ "$alive_max" -le $(( CONNECTIONS + 2 )) ] || ok=0
if [ "$ok" = 1 ]; then echo "SOAK PASSED"; else echo "SOAK FAILED"; fi
echo "# keygate $("$KEYGATE" --version); run dir $RUN"
