#!/usr/bin/env bash
# What a feature costs: cached-key requests through keygate with and without it, each variant
# a fresh keygate process under the same load (wrk, 100 hot keys), with nginx as origin and
# auth API, all on 127.0.0.1. See bench/README.md.
#
#   bench/variants.sh rate-limits      # no limit; one local minute limit on every request;
#                                      # the same limit on Redis (redis-server on this box);
#                                      # a flood from one client over its limit (all 429s)
#   bench/variants.sh observability    # nothing; the prometheus plugin with every flag;
#                                      # that and a JSON access log to a file
#   RUNS=3 bench/variants.sh ...       # bench/README.md reports the median of three runs
#
# Targets: rate limits (issue 12): local >= 0.9x the unlimited req/s, redis >= 0.6x with 1
# Redis round trip per request, a 429 costs no more CPU than a cached 200; observability
# (issue 13): every flag on costs <= 1.05x the CPU per request of none.
# Knobs: DURATION=10 WARMUP=2 CONNS=64 HOT_KEYS=100 RUNS=1 KEYGATE=<binary>
DURATION=${DURATION:-10} WARMUP=${WARMUP:-2} CONNS=${CONNS:-64} HOT_KEYS=${HOT_KEYS:-100}
RUNS=${RUNS:-1}
SUITE=${1:-}
case "$SUITE" in
    rate-limits|observability) ;;
    *) echo "usage: $0 rate-limits|observability" >&2; exit 2 ;;
esac
ORIGIN=19180 AUTH=19181 KEYGATE_PORT=19195 REDIS_PORT=19379
NEEDS="nginx wrk redis-server" NAME=$SUITE
. "$(dirname "$0")/lib.sh"

start_backends '{"consumer":{"id":"c-$arg_apikey"}}'
redis-server --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no >"$RUN/redis.log" 2>&1 & PIDS+=($!)
wait_port $ORIGIN; wait_port $AUTH; wait_port $REDIS_PORT

hot_keys_lua > "$RUN/hot.lua"

# A keygate config, with these extra top-level lines (plugins, [log]).
config() { # extra-lines
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
    printf '%b\n' "$1"
}

evals() { redis-cli -p $REDIS_PORT INFO commandstats | awk -F'[:=,]' '/^cmdstat_eval(sha)?:/ { n += $3 } END { print n + 0 }'; }

# One variant: start keygate with its config, warm up, measure, stop. Prints one line.
variant() { # name limit-lines
    local name=$1 before after calls0 out rps p99 bad total us trips pid
    config "$2" > "$RUN/$name.toml"
    "$KEYGATE" serve --config "$RUN/$name.toml" 2>"$RUN/$name.log" & pid=$!
    wait_http $KEYGATE_PORT
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
limit() { printf '[[plugins]]\nname = "rate-limiting"\n[plugins.config]\n%s' "$1"; }
PROMETHEUS='[[plugins]]\nname = "prometheus"\n[plugins.config]\nper_consumer = true\nstatus_code_metrics = true\nlatency_metrics = true\nbandwidth_metrics = true\nupstream_health_metrics = true'
for run in $(seq "$RUNS"); do
    if [ "$SUITE" = rate-limits ]; then
        variant no-limit ""
        variant local-minute "$(limit 'minute = 1000000000\nlimit_by = "consumer"')"
        variant redis-minute "$(limit "minute = 1000000000\nlimit_by = \"consumer\"\npolicy = \"redis\"\nredis = { host = \"127.0.0.1\", port = $REDIS_PORT }")"
        # Every client comes from 127.0.0.1: after the first request each second, all 429s.
        variant local-flood-429 "$(limit 'second = 1\nlimit_by = "ip"')"
    else
        variant nothing ""
        variant prometheus-every-flag "$PROMETHEUS"
        variant prometheus-and-access-log "$PROMETHEUS\n[log]\naccess = \"json\"\naccess_file = \"$RUN/access.log\""
    fi
done
echo "# keygate $("$KEYGATE" --version); run dir $RUN"
