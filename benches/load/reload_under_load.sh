#!/usr/bin/env bash
# Traffic during reloads: a steady open-loop load at a fixed rate against portico serving the
# generated 100,000-route config (benches/support/scale_config.rs), while
# `POST /admin/reload` runs every few seconds. Prints p99 and max latency per second (by
# the second each request was scheduled in, from benches/open_loop.rs) with the seconds in
# which a reload ran marked, and compares the seconds with a reload to those without.
#
#   benches/load/reload_under_load.sh                  # 100k routes, 2,000 req/s, 30 s
#   RATE=5000 DURATION=20 RELOAD_EVERY=4 benches/load/reload_under_load.sh
#
# What runs where: portico (one worker thread) on PROXY_CPU; the upstream (nginx, one
# worker, `return 200`) and the load generator on LOAD_CPU. The reload's build runs in
# portico's process, so on PROXY_CPU too: the case where it competes with the proxy thread.
# The request goes to a prefix route of host 0 (`127.0.0.1`, `/v1/svc0/r0`), among the
# 1,000 routes of its host table.
#
# Environment (defaults in brackets):
#   ROUTES [100000]          routes in the generated config
#   RATE [2000]              requests per second (open loop)
#   DURATION [30]            measured seconds
#   WARMUP [2]               seconds of load before measuring
#   CONNECTIONS [32]         keep-alive connections of the generator
#   RELOAD_EVERY [5]         seconds between reloads (the first one 2 s into the window)
#   PROXY_CPU [0]  LOAD_CPU [1]   cores (taskset); empty = no pinning
#   PORTICO_BIN              the gateway [target/release/portico, built when missing]
#   GEN_BIN                  the config generator [target/release/deps/config_scale-*]
#   OPEN_LOOP_BIN            the load generator [target/release/deps/open_loop-*]
#   NGINX_BIN [nginx]        the upstream
#   RESULTS [benches/RESULTS.md]  where a dated section is appended
#   RECORD [1]               0 = print only
#   KEEP_TMP [0]             1 = keep the temp dir (config, logs, the generator's JSON)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROUTES=${ROUTES:-100000}
RATE=${RATE:-2000}
DURATION=${DURATION:-30}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
RELOAD_EVERY=${RELOAD_EVERY:-5}
PROXY_CPU=${PROXY_CPU-0}
LOAD_CPU=${LOAD_CPU-1}
NGINX_BIN=${NGINX_BIN:-nginx}
RESULTS=${RESULTS:-$REPO/benches/RESULTS.md}
RECORD=${RECORD:-1}
KEEP_TMP=${KEEP_TMP:-0}

die() { echo "reload_under_load.sh: $*" >&2; exit 1; }
for tool in curl python3 "$NGINX_BIN"; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
pin() { # cpu command...
    local cpu=$1
    shift
    if [[ -n $cpu ]] && command -v taskset >/dev/null; then taskset -c "$cpu" "$@"; else "$@"; fi
}

cd "$REPO"
newest() { ls -t "$@" 2>/dev/null | grep -v '\.d$' | head -1 || true; }
targets=()
[[ -z ${PORTICO_BIN:-} && ! -x target/release/portico ]] && targets+=(--bin portico)
[[ -z ${GEN_BIN:-} && -z $(newest target/release/deps/config_scale-*) ]] && targets+=(--bench config_scale)
[[ -z ${OPEN_LOOP_BIN:-} && -z $(newest target/release/deps/open_loop-*) ]] && targets+=(--bench open_loop)
if ((${#targets[@]})); then
    echo "building (release): ${targets[*]} ..." >&2
    cargo build --release "${targets[@]}" >&2
fi
PORTICO_BIN=${PORTICO_BIN:-$REPO/target/release/portico}
GEN_BIN=${GEN_BIN:-$(newest "$REPO"/target/release/deps/config_scale-*)}
OPEN_LOOP_BIN=${OPEN_LOOP_BIN:-$(newest "$REPO"/target/release/deps/open_loop-*)}
for bin in "$PORTICO_BIN" "$GEN_BIN" "$OPEN_LOOP_BIN"; do
    [[ -x $bin ]] || die "missing binary '$bin'"
done

TMP=$(mktemp -d /tmp/portico-reload-load.XXXXXX)
chmod 700 "$TMP"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f $TMP/upstream.pid ]] && kill "$(cat "$TMP/upstream.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    if ((KEEP_TMP)); then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
UP_PORT=$(free_port)
PORT=$(free_port)
ADMIN=127.0.0.1:$(free_port)

mkdir -p "$TMP/upstream.tmp"
sed -e "s|@DIR@|$TMP|g" -e "s|@PORT@|$UP_PORT|g" "$HERE/upstream.nginx.conf.tmpl" >"$TMP/upstream.conf"
pin "$LOAD_CPU" "$NGINX_BIN" -p "$TMP" -c "$TMP/upstream.conf" -e "$TMP/upstream.error.log"

# The admin API answers a reload only with its token.
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/admin.token")
AUTH="Authorization: Bearer $(<"$TMP/admin.token")"
"$GEN_BIN" gen --routes "$ROUTES" --upstream "127.0.0.1:$UP_PORT" --listen "127.0.0.1:$PORT" \
    --admin "$ADMIN" --runtime-dir "$TMP" --admin-token-file "$TMP/admin.token" \
    --traffic-host 127.0.0.1 >"$TMP/portico.toml"
# Started as a simple command, not through `pin`: a function run in the background is a
# subshell, and `$!` would be that subshell's pid, so the cleanup's kill left portico running.
if [[ -n $PROXY_CPU ]] && command -v taskset >/dev/null; then
    taskset -c "$PROXY_CPU" "$PORTICO_BIN" serve -c "$TMP/portico.toml" >"$TMP/portico.log" 2>&1 &
else
    "$PORTICO_BIN" serve -c "$TMP/portico.toml" >"$TMP/portico.log" 2>&1 &
fi
PIDS+=($!)
for _ in $(seq 1 1200); do
    curl -fsS -o /dev/null "http://$ADMIN/readyz" 2>/dev/null && break
    kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$TMP/portico.log" >&2; die "portico exited"; }
    sleep 0.05
done
URL="http://127.0.0.1:$PORT/v1/svc0/r0/orders/42"
code=$(curl -sS -o /dev/null -w '%{http_code}' "$URL") || true
[[ $code == 200 ]] || { tail -5 "$TMP/portico.log" >&2; die "GET $URL answered '$code', not 200"; }
echo "portico ready with $ROUTES routes; $RATE req/s for ${DURATION} s (+${WARMUP} s warm-up), a reload every ${RELOAD_EVERY} s" >&2

# The generator's per-second buckets count from the end of its warm-up; reload moments are
# taken relative to the same instant (give or take the generator's connection setup).
start_ns=$(date +%s%N)
pin "$LOAD_CPU" "$OPEN_LOOP_BIN" --url "$URL" --rate "$RATE" --duration "$DURATION" \
    --connections "$CONNECTIONS" --warmup "$WARMUP" --per-second --json >"$TMP/load.json" &
LOAD_PID=$!
PIDS+=("$LOAD_PID")
window_ns=$((start_ns + WARMUP * 1000000000))
: >"$TMP/reloads.txt"
next=2
while kill -0 "$LOAD_PID" 2>/dev/null; do
    now=$(date +%s%N)
    at=$(((now - window_ns) / 1000000)) # ms into the window
    if ((at >= next * 1000 && at < (DURATION - 1) * 1000)); then
        t0=$(date +%s%N)
        out=$(curl -sS -o "$TMP/reload.json" -w '%{http_code}' -H "$AUTH" -X POST "http://$ADMIN/admin/reload") || out=000
        t1=$(date +%s%N)
        [[ $out == 200 ]] || { cat "$TMP/reload.json" >&2; die "reload answered $out"; }
        echo "$(((t0 - window_ns) / 1000000)) $(((t1 - window_ns) / 1000000))" >>"$TMP/reloads.txt"
        next=$((next + RELOAD_EVERY))
    fi
    sleep 0.05
done
load_rc=0
wait "$LOAD_PID" || load_rc=$?
((load_rc == 0 || load_rc == 3)) || die "the load generator failed ($load_rc)"

REPORT=$(python3 - "$TMP/load.json" "$TMP/reloads.txt" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
reloads = [tuple(int(x) for x in line.split()) for line in open(sys.argv[2]) if line.strip()]
def reload_in(second):
    lo, hi = second * 1000, (second + 1) * 1000
    return [(a, b) for a, b in reloads if a < hi and b >= lo]
rows, with_r, without = [], [], []
for s in report.get("per_second", []):
    marks = reload_in(s["second"])
    p99, mx = s["p99_ms"], s["max_ms"]
    if p99 is not None:
        (with_r if marks else without).append(p99)
    note = ", ".join(f"◀ reload {b - a} ms (from {a / 1000:.2f} s)" for a, b in marks if a >= s["second"] * 1000)
    if marks and not note:
        note = "◀ (reload continues)"
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    rows.append(f"| {s['second']} | {s['count']} | {fmt(p99)} | {fmt(mx)} | {note} |")
def med(v):
    v = sorted(v)
    return v[len(v) // 2] if v else float("nan")
lat = report["latency_ms"] or {}
durations = [b - a for a, b in reloads]
print(f"rate {report['rate']:.0f} req/s, achieved {report['achieved_rate']:.0f} ({'behind' if report['behind'] else 'on schedule'}), "
      f"{report['completed']} completed, {report['non_2xx']} non-2xx, {report['errors']} errors; "
      f"whole run p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, p99.9 {lat.get('p99_9')} ms, max {lat.get('max')} ms")
print(f"reloads: {len(reloads)}, {', '.join(str(d) for d in durations)} ms")
print(f"per-second p99, median: {med(without):.3f} ms in the {len(without)} seconds without a reload, "
      f"{med(with_r):.3f} ms in the {len(with_r)} with one (worst {max(with_r, default=float('nan')):.3f} vs {max(without, default=float('nan')):.3f})")
print()
print("| second | requests | p99 ms | max ms | reload |")
print("|---:|---:|---:|---:|---|")
print("\n".join(rows))
EOF
)
echo
echo "$REPORT"

if ((RECORD)); then
    {
        echo
        echo "## Traffic during reloads — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo
        echo "\`benches/load/reload_under_load.sh\`: $ROUTES routes (generated), $RATE req/s open loop for ${DURATION} s over $CONNECTIONS connections, \`POST /admin/reload\` every ${RELOAD_EVERY} s; portico (one worker thread) on core ${PROXY_CPU:-any}, upstream nginx and the generator on core ${LOAD_CPU:-any}, $(nproc) cores."
        echo
        echo "$REPORT"
    } >>"$RESULTS"
    echo "appended to $RESULTS" >&2
fi
