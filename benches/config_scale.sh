#!/usr/bin/env bash
# Config at scale, process level: for each size, a generated config of hosts × paths ×
# versions routes (benches/support/scale_config.rs: prefix and exact paths, versions from the
# URI, a header and portico's versioning, jwt / rate-limit / headers plugins, 50 clusters),
# and what it costs the real binary:
#
#   - `portico check`: wall time and peak RSS (/usr/bin/time -v), median of CHECK_RUNS;
#   - `portico serve`: time from start to ready, RSS once loaded, and memory per route
#     (RSS minus the RSS of the same config with no route, divided by the routes);
#   - `POST /admin/reload` of the unchanged file, RELOADS times: latency (curl), and RSS
#     after them;
#   - `GET /metrics`: size and time of a scrape, with no traffic.
#
# The in-process breakdown of the same configs (parse, validation, lint, snapshot build,
# bytes held) is `cargo bench --bench config_scale`; route lookups at 100,000 routes are
# `cargo bench --bench route_match -- scale`.
#
#   benches/config_scale.sh                      # 10,000 and 100,000 routes
#   SIZES="100000" RELOADS=3 benches/config_scale.sh
#
# Environment (defaults in brackets):
#   SIZES ["10000 100000"]   route counts (rounded down to thousands)
#   STRICT [0]               1 = the shape whose header-versioned jwt routes answer 404
#                            instead of falling through (`gen --strict`; the rate-limit
#                            routes still fall through, so the lint still has work)
#   CHECK_RUNS [3]           `portico check` runs per size
#   RELOADS [5]              reloads per size
#   PORTICO_BIN              the gateway [target/release/portico, built when missing]
#   GEN_BIN                  the generator [newest target/release/deps/config_scale-*, built when missing]
#   RESULTS [benches/RESULTS.md]  where a dated section is appended
#   RECORD [1]               0 = print only
#   LABEL [""]               a note for the RESULTS heading (e.g. the commit measured)
#   KEEP_TMP [0]             1 = keep the temp dir (configs, logs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SIZES=${SIZES:-"10000 100000"}
CHECK_RUNS=${CHECK_RUNS:-3}
RELOADS=${RELOADS:-5}
RESULTS=${RESULTS:-$HERE/RESULTS.md}
RECORD=${RECORD:-1}
LABEL=${LABEL:-}
KEEP_TMP=${KEEP_TMP:-0}
STRICT=${STRICT:-0}
GEN_FLAGS=()
((STRICT)) && GEN_FLAGS+=(--strict)

die() { echo "config_scale.sh: $*" >&2; exit 1; }
for tool in curl python3 /usr/bin/time; do
    command -v "$tool" >/dev/null || die "needs $tool"
done

cd "$REPO"
newest() { ls -t "$@" 2>/dev/null | grep -v '\.d$' | head -1 || true; }
if [[ -z ${PORTICO_BIN:-} || -z ${GEN_BIN:-} ]]; then
    if [[ -z ${PORTICO_BIN:-} && ! -x target/release/portico ]] ||
        [[ -z ${GEN_BIN:-} && -z $(newest target/release/deps/config_scale-*) ]]; then
        echo "building (release) ..." >&2
        cargo build --release --bin portico --bench config_scale >&2
    fi
fi
PORTICO_BIN=${PORTICO_BIN:-$REPO/target/release/portico}
GEN_BIN=${GEN_BIN:-$(newest "$REPO"/target/release/deps/config_scale-*)}
[[ -x $PORTICO_BIN ]] || die "no gateway binary at $PORTICO_BIN"
[[ -x $GEN_BIN ]] || die "no generator binary (GEN_BIN)"

TMP=$(mktemp -d /tmp/portico-scale.XXXXXX)
chmod 700 "$TMP"
PID=""
cleanup() {
    if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    if ((KEEP_TMP)); then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
median() { sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

UPSTREAM=127.0.0.1:9 # nothing is proxied here; clusters only need an address
ADMIN=""
# Starts the gateway on $1 and waits until it is ready; READY_S is the seconds that took.
READY_S=""
start() {
    local config=$1 log=$2 start_ns
    start_ns=$(date +%s%N)
    "$PORTICO_BIN" serve -c "$config" >"$log" 2>&1 &
    PID=$!
    for _ in $(seq 1 2400); do
        if curl -fsS -o /dev/null "http://$ADMIN/readyz" 2>/dev/null; then
            READY_S=$(echo "scale=3; ($(date +%s%N) - $start_ns) / 1000000000" | bc)
            return
        fi
        kill -0 "$PID" 2>/dev/null || { cat "$log" >&2; die "the gateway exited"; }
        sleep 0.05
    done
    die "the gateway was not ready within 120 s"
}
stop() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}
# The admin API answers a reload only with its token.
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/admin.token")
AUTH="Authorization: Bearer $(<"$TMP/admin.token")"
generate() { # routes file
    "$GEN_BIN" gen --routes "$1" --upstream "$UPSTREAM" --listen "127.0.0.1:$(free_port)" \
        --admin "$ADMIN" --runtime-dir "$TMP" --admin-token-file "$TMP/admin.token" "${GEN_FLAGS[@]}" >"$2"
}

# The gateway with every cluster and no route: what the routes' memory is measured from.
ADMIN=127.0.0.1:$(free_port)
generate 0 "$TMP/empty.toml"
start "$TMP/empty.toml" "$TMP/empty.log"
sleep 2
EMPTY_RSS=$(rss_kib "$PID")
stop

ROWS=()
for size in $SIZES; do
    config=$TMP/routes-$size.toml
    ADMIN=127.0.0.1:$(free_port)
    generate "$size" "$config"
    routes=$(grep -c '^\[\[routes\]\]' "$config" || true)
    bytes=$(stat -c %s "$config")
    echo "== $routes routes ($((bytes / 1024)) KiB of TOML)" >&2

    walls=() peaks=()
    for _ in $(seq 1 "$CHECK_RUNS"); do
        /usr/bin/time -v "$PORTICO_BIN" check -c "$config" >/dev/null 2>"$TMP/time.txt" ||
            { cat "$TMP/time.txt" >&2; die "check failed"; }
        walls+=("$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2, t, ":"); s=0; for (i=1; i<=n; i++) s=s*60+t[i]; print s}' "$TMP/time.txt")")
        peaks+=("$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time.txt")")
    done
    check_s=$(printf '%s\n' "${walls[@]}" | median)
    check_kib=$(printf '%s\n' "${peaks[@]}" | median)
    echo "   check: ${check_s} s, peak ${check_kib} KiB" >&2

    start "$config" "$TMP/serve-$size.log"
    ready_s=$READY_S
    sleep 2
    loaded_kib=$(rss_kib "$PID")
    per_route=$(((loaded_kib - EMPTY_RSS) * 1024 / routes))
    echo "   serve: ready in ${ready_s} s, RSS ${loaded_kib} KiB (${per_route} B/route)" >&2

    lat=()
    for _ in $(seq 1 "$RELOADS"); do
        out=$(curl -sS -o "$TMP/reload.json" -w '%{http_code} %{time_total}' -H "$AUTH" -X POST "http://$ADMIN/admin/reload")
        [[ ${out%% *} == 200 ]] || { cat "$TMP/reload.json" >&2; die "reload answered ${out%% *}"; }
        lat+=("$(echo "${out##* } * 1000" | bc)")
        sleep 0.5
    done
    reload_ms=$(printf '%s\n' "${lat[@]}" | median)
    reload_min=$(printf '%s\n' "${lat[@]}" | sort -g | head -1)
    reload_max=$(printf '%s\n' "${lat[@]}" | sort -g | tail -1)
    sleep 2
    reloaded_kib=$(rss_kib "$PID")
    echo "   reload: median ${reload_ms} ms (${reload_min}–${reload_max}), RSS after ${reloaded_kib} KiB" >&2

    metrics=$(curl -sS -o "$TMP/metrics.txt" -w '%{time_total}' "http://$ADMIN/metrics")
    metrics_kib=$(($(stat -c %s "$TMP/metrics.txt") / 1024))
    echo "   /metrics: ${metrics_kib} KiB in $(echo "$metrics * 1000" | bc) ms" >&2
    stop

    ROWS+=("$(printf '| %d | %.2f s | %.0f MiB | %.2f s | %.0f MiB | %d B | %.0f ms (%.0f–%.0f) | %.0f MiB | %d KiB, %.0f ms |' \
        "$routes" "$check_s" "$(echo "$check_kib / 1024" | bc -l)" "$ready_s" \
        "$(echo "$loaded_kib / 1024" | bc -l)" "$per_route" "$reload_ms" "$reload_min" "$reload_max" \
        "$(echo "$reloaded_kib / 1024" | bc -l)" "$metrics_kib" "$(echo "$metrics * 1000" | bc -l)")")
done

HEADER="| routes | \`portico check\` | check peak RSS | serve: start to ready | RSS loaded | memory per route | \`POST /admin/reload\` median (min–max of $RELOADS) | RSS after reloads | \`/metrics\`, no traffic |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
TABLE=$(printf '%s\n' "$HEADER" "${ROWS[@]}")
echo
echo "$TABLE"
echo "(memory per route: RSS loaded minus $((EMPTY_RSS / 1024)) MiB with the same clusters and no route, over the routes)"

if ((RECORD)); then
    {
        echo
        echo "## Config at scale — $(date -u +%Y-%m-%dT%H:%M:%SZ)${LABEL:+ — $LABEL}"
        echo
        echo "\`benches/config_scale.sh\` (SIZES=\"$SIZES\", STRICT=$STRICT, CHECK_RUNS=$CHECK_RUNS, RELOADS=$RELOADS), $(nproc) cores, \`$(basename "$PORTICO_BIN")\` $("$PORTICO_BIN" --version 2>/dev/null | awk '{print $2}'). Memory per route is the loaded RSS minus $((EMPTY_RSS / 1024)) MiB (the same clusters, no route), over the routes."
        echo
        echo "$TABLE"
    } >>"$RESULTS"
    echo "appended to $RESULTS" >&2
fi
