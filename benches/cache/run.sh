#!/usr/bin/env bash
# Cache benchmarks (see benches/cache/README.md):
#   hits      requests/s of cache hits on portico against portico's uncached path to the same
#             origin and nginx proxy_cache, interleaved over ROUNDS, with wrk;
#   stampede  STAMPEDE concurrent requests for one cold key: how many reach the origin
#             (collapsed by the cache lock: 1 expected) and how long the burst takes;
#   failure   the origin killed a third into a DURATION-second wrk run against a cached and
#             an uncached route: client-visible errors during the outage (stale-if-error
#             keeps the cached route at 0).
#
#   benches/cache/run.sh                              # MODE=all, ROUNDS=3, DURATION=10
#   MODE=hits DURATION=2 CONNECTIONS=2 ROUNDS=1 PORTICO_BIN=target/debug/portico RECORD=0 benches/cache/run.sh
#
# Environment (defaults in brackets): MODE [all] (hits | stampede | failure | all),
# ROUNDS [3], DURATION [10] (seconds per wrk run), WARMUP [2], CONNECTIONS [50] (wrk -c),
# STAMPEDE [1000], PORTICO_BIN (else `cargo build --release`), NGINX_BIN, PROXY_CPU [0],
# LOAD_CPU [1], PORT_BASE [18000], RESULTS [benches/cache/RESULTS.md], RECORD [1],
# KEEP_TMP [0], MAX_SECONDS [estimate + 180].
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
LOAD=$REPO/benches/load
BENCH=cache/run.sh

MODE=${MODE:-all}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
STAMPEDE=${STAMPEDE:-1000}
RESULTS=${RESULTS:-$HERE/RESULTS.md}
# The helpers of the load benchmark: die, log, free ports, templates, nginx start, cleanup.
CONTENDERS="portico"
WANT_JWT=0
# shellcheck source=benches/load/lib.sh
source "$LOAD/lib.sh"
CONTENDER_LIST=(portico nginx)
STARTED=()

for v in ROUNDS DURATION WARMUP CONNECTIONS STAMPEDE; do
    is_uint "${!v}" || die "$v must be a non-negative integer (got '${!v}')"
done
case $MODE in hits | stampede | failure | all) ;; *) die "MODE must be hits, stampede, failure or all" ;; esac
want() { [[ $MODE == all || $MODE == "$1" ]]; }

bench_tools wrk
bench_portico_bin
estimate=0
want hits && estimate=$((estimate + ROUNDS * 3 * (DURATION + WARMUP + 2)))
want stampede && estimate=$((estimate + 30))
want failure && estimate=$((estimate + 2 * (DURATION + 10)))
MAX_SECONDS=${MAX_SECONDS:-$((estimate + 180))}
bench_deadline "$MAX_SECONDS"
bench_setup_tmp portico-cache-bench
read -r UPSTREAM_PORT NGINX_PORT PORTICO_PORT ADMIN_PORT ORIGIN_PORT < <(free_ports 5)

start_origin() { # cache-control delay-ms -> ORIGIN_PID
    python3 "$HERE/origin.py" "$ORIGIN_PORT" "$1" "$2" >"$TMP/origin.log" 2>&1 &
    ORIGIN_PID=$!
    STARTED+=("$ORIGIN_PID:TERM")
    wait_http "http://127.0.0.1:$ORIGIN_PORT/__count" "$ORIGIN_PID" "origin" 10
}

start_portico_at() { # upstream-port -> PORTICO_PID
    render "$HERE/portico.toml.tmpl" "$TMP/portico.toml" DIR="$TMP" PORT="$PORTICO_PORT" \
        ADMIN_PORT="$ADMIN_PORT" UPSTREAM_PORT="$1"
    "$PORTICO_BIN" check -c "$TMP/portico.toml" >/dev/null 2>"$TMP/check.log" ||
        { cat "$TMP/check.log" >&2; die "portico rejects $TMP/portico.toml"; }
    taskset -c "$PROXY_CPU" "$PORTICO_BIN" serve -c "$TMP/portico.toml" >"$TMP/portico.log" 2>&1 &
    PORTICO_PID=$!
    STARTED+=("$PORTICO_PID:INT")
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" "$PORTICO_PID" "portico" 30
}

stop_pid() { # pid [signal]
    kill -"${2:-INT}" "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

wrk_run() { # url seconds -> the wrk report on stdout
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${2}s" --latency "$1"
}

rps() { awk '/^Requests\/sec:/ { print $2 }'; }
errors() { # wrk report -> non-2xx answers plus socket errors
    awk '/Non-2xx or 3xx responses:/ { n += $5 }
         /Socket errors:/ { gsub(",", ""); n += $4 + $6 + $8 + $10 }
         END { print n + 0 }'
}

REPORT=$(mktemp "$TMP/report.XXXX")
say() { printf '%s\n' "$*" | tee -a "$REPORT"; }
say "## $(date -u +%Y-%m-%dT%H:%MZ) cache benchmark (MODE=$MODE, ROUNDS=$ROUNDS, DURATION=${DURATION}s, -c $CONNECTIONS)"
say ""
say "portico: $PORTICO_BIN ($BIN_ORIGIN), commit $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
say ""

if want hits; then
    check_deadline "hits"
    render "$HERE/upstream.nginx.conf.tmpl" "$TMP/upstream.conf" DIR="$TMP" PORT="$UPSTREAM_PORT"
    render "$HERE/nginx-cache.conf.tmpl" "$TMP/nginx-cache.conf" DIR="$TMP" PORT="$NGINX_PORT" \
        UPSTREAM_PORT="$UPSTREAM_PORT"
    mkdir -p "$TMP/upstream.tmp" "$TMP/nginx-cache.tmp/cache"
    start_nginx upstream "$TMP/upstream.conf" "$LOAD_CPU"
    UPSTREAM_PID=$started_pid
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "$UPSTREAM_PID" "upstream nginx" 10
    start_nginx nginx-cache "$TMP/nginx-cache.conf" "$PROXY_CPU"
    NGINX_PID=$started_pid
    wait_http "http://127.0.0.1:$NGINX_PORT/cached/x" "$NGINX_PID" "nginx-cache" 10
    start_portico_at "$UPSTREAM_PORT"
    # Fill both caches and check that the second answer is a hit.
    for url in "http://127.0.0.1:$PORTICO_PORT/cached/x" "http://127.0.0.1:$NGINX_PORT/cached/x"; do
        curl -fsS -o /dev/null "$url"
        status=$(curl -fsS -D - -o /dev/null "$url" | tr -d '\r' | awk -F': ' 'tolower($1) == "cache-status" { print $2 }')
        [[ $status == *hit* || $status == HIT ]] || die "no cache hit from $url (Cache-Status: $status)"
    done
    declare -A samples=()
    ERRS=0
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in portico-cache portico-plain nginx-cache; do
            case $c in
                portico-cache) url="http://127.0.0.1:$PORTICO_PORT/cached/x" ;;
                portico-plain) url="http://127.0.0.1:$PORTICO_PORT/plain/x" ;;
                nginx-cache) url="http://127.0.0.1:$NGINX_PORT/cached/x" ;;
            esac
            ((WARMUP > 0)) && wrk_run "$url" "$WARMUP" >/dev/null
            out=$(wrk_run "$url" "$DURATION")
            printf '%s\n' "$out" >"$TMP/wrk-$c-$r.txt"
            ERRS=$((ERRS + $(errors <<<"$out")))
            samples[$c]+="$(rps <<<"$out") "
            log "round $r $c: $(rps <<<"$out") req/s"
        done
    done
    med() { tr ' ' '\n' <<<"${samples[$1]}" | grep . | median; }
    pc=$(med portico-cache) pp=$(med portico-plain) nc=$(med nginx-cache)
    say "### hits (median req/s of $ROUNDS rounds, one core each, wrk -c $CONNECTIONS)"
    say ""
    say "| contender | req/s | vs nginx proxy_cache |"
    say "|---|---|---|"
    for row in "portico cache hit:$pc" "portico uncached (plain path):$pp" "nginx proxy_cache hit:$nc"; do
        say "| ${row%%:*} | ${row#*:} | $(awk -v a="${row#*:}" -v b="$nc" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }') |"
    done
    say ""
    say "errors during the runs: $ERRS"
    say ""
    stop_pid "$PORTICO_PID"
    stop_pid "$NGINX_PID" TERM
    stop_pid "$UPSTREAM_PID" TERM
fi

if want stampede; then
    check_deadline "stampede"
    start_origin "max-age=60" 500
    start_portico_at "$ORIGIN_PORT"
    out=$(python3 "$HERE/stampede.py" "$PORTICO_PORT" "/cached/cold" "$STAMPEDE")
    reached=$(curl -fsS "http://127.0.0.1:$ORIGIN_PORT/__count")
    waits=$(metric "$ADMIN_PORT" portico_cache_lock_waits_total)
    say "### stampede: $STAMPEDE concurrent requests for one cold key (origin answers after 500 ms)"
    say ""
    say "clients: $out; requests reaching the origin: $reached; lock waits counted: $waits"
    say ""
    stop_pid "$PORTICO_PID"
    stop_pid "$ORIGIN_PID" TERM
fi

if want failure; then
    check_deadline "failure"
    say "### failure window: the origin killed $((DURATION / 3)) s into a ${DURATION} s run"
    say ""
    say "| route | requests | client-visible errors |"
    say "|---|---|---|"
    for route in cached plain; do
        start_origin "max-age=1" 0
        start_portico_at "$ORIGIN_PORT"
        curl -fsS -o /dev/null "http://127.0.0.1:$PORTICO_PORT/$route/x"
        sleep 1.2 # stale from here: every request asks the origin first
        wrk_run "http://127.0.0.1:$PORTICO_PORT/$route/x" "$DURATION" >"$TMP/wrk-failure-$route.txt" &
        wrk_pid=$!
        sleep $((DURATION / 3))
        kill -KILL "$ORIGIN_PID"
        wait "$ORIGIN_PID" 2>/dev/null || true
        wait "$wrk_pid" || true
        out=$(<"$TMP/wrk-failure-$route.txt")
        total=$(awk '/requests in/ { print $1 }' <<<"$out")
        say "| /$route | $total | $(errors <<<"$out") |"
        stop_pid "$PORTICO_PID"
    done
    say ""
fi

if ((RECORD)); then
    { cat "$REPORT"; echo; } >>"$RESULTS"
    log "appended to $RESULTS"
fi
