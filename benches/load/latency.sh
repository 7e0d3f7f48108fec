#!/usr/bin/env bash
# Latency at a fixed request rate: p50/p99/p99.9 of each contender at RATE req/s, measured by
# the open-loop generator benches/open_loop.rs (constant rate, latency from each request's
# scheduled send time: coordinated omission corrected), with bare Pingora and nginx in the
# same run. Same contenders and process layout as run.sh (benches/load/lib.sh); see
# benches/load/README.md, "Latency at a fixed rate".
#
#   benches/load/latency.sh                          # 5 rounds × 10 s at 10k req/s, 4 contenders
#   RECORD=0 ROUNDS=1 DURATION=3 benches/load/latency.sh    # a smoke run
#
# Environment (defaults in brackets):
#   RATE [10000]           requests per second, the same for every contender
#   ROUNDS [5]             interleaved rounds (A B C D A B C D ...)
#   DURATION [10]          measured seconds per round
#   WARMUP [2]             seconds at RATE before each measured window, on the same
#                          connections, not recorded (0 = none)
#   CONNECTIONS [64]       the generator's keep-alive connection pool
#   CONTENDERS ["nginx pingora portico portico+jwt"]   any of run.sh's contenders, interleaved
#                          in the order given; "pingora" (bare Pingora) is the reference of the
#                          p99 differences, nginx is the second reference
#   P99_LIMIT_MS [10]      a round whose p99 is above this is counted against its contender
#   P99_BUDGET_MS [0.5]    allowed p99 over bare Pingora's (DESIGN.md, "Performance budget")
#   OPEN_LOOP_BIN          use this generator instead of `cargo build --release --bench open_loop`
#   and, as in run.sh: NICE, QUIET_THRESHOLD, QUIET_WAIT, PORTICO_BIN, BARE_BIN, BARE_WORK_STEALING,
#   NGINX_BIN, HAPROXY_BIN, PROXY_CPU [0], LOAD_CPU [1], PORT_BASE, RESULTS, RECORD, KEEP_TMP,
#   MAX_SECONDS (default: estimate + 180)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BENCH=latency.sh

RATE=${RATE:-10000}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
CONTENDERS=${CONTENDERS:-"nginx pingora portico portico+jwt"}
P99_LIMIT_MS=${P99_LIMIT_MS:-10}
P99_BUDGET_MS=${P99_BUDGET_MS:-0.5}
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
bench_own_session "$@"

# --- inputs -------------------------------------------------------------------------------
bench_check_uints RATE ROUNDS DURATION WARMUP CONNECTIONS
((RATE >= 1 && ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1)) ||
    die "RATE, ROUNDS, DURATION and CONNECTIONS must be >= 1"
[[ $P99_LIMIT_MS =~ ^[0-9]+([.][0-9]+)?$ && $P99_BUDGET_MS =~ ^[0-9]+([.][0-9]+)?$ ]] ||
    die "P99_LIMIT_MS and P99_BUDGET_MS must be non-negative numbers"
bench_check_contenders
# Its forgeries come from wrk's forged.lua; the open-loop generator sends one fixed token.
! has_contender portico+forged || die "portico+forged is run.sh's contender (wrk with forged.lua), not latency.sh's"
((WANT_TLS == 0)) || die "the TLS contenders are run.sh's: the open-loop generator speaks plain HTTP"

# --- tools and binaries -------------------------------------------------------------------
bench_tools
bench_portico_bin
bench_bare_bin
if [[ -n ${OPEN_LOOP_BIN:-} ]]; then
    [[ -x $OPEN_LOOP_BIN ]] || die "OPEN_LOOP_BIN=$OPEN_LOOP_BIN is not an executable"
else
    log "building the open-loop generator (cargo build --release --bench open_loop)"
    OPEN_LOOP_BIN=$(cargo_bench_bin open_loop) || die "cannot build benches/open_loop.rs"
    [[ -x $OPEN_LOOP_BIN ]] || die "no open_loop executable"
fi
bench_renice

ncont=${#CONTENDER_LIST[@]}
estimate=$((15 + ROUNDS * ncont * (WARMUP + DURATION + 3)))
MAX_SECONDS=${MAX_SECONDS:-$((estimate + ROUNDS * ncont * QUIET_WAIT + 180))}
bench_deadline "$MAX_SECONDS"
log "latency at $RATE req/s, contenders: ${CONTENDER_LIST[*]}; expected ~${estimate}s, capped at ${MAX_SECONDS}s"

# --- processes, configs, the token, checks -------------------------------------------------
bench_setup_tmp portico-latency
bench_ports
bench_mint_token
bench_start_upstream
bench_start_contenders
bench_verify_contenders

# --- measuring ----------------------------------------------------------------------------
RUNS=$TMP/runs.tsv
: >"$RUNS"
measure_round() { # contender round
    local c=$1 r=$2 out="$TMP/open_loop.$1.$2.json"
    # shellcheck disable=SC2086
    local mp=(${MEASURE_PIDS[$c]}) hdr=()
    if is_protected "$c"; then hdr=(--header "Authorization: Bearer $TOKEN"); fi
    check_deadline "$c round $r"
    local bg
    bg=$(wait_quiet "$c round $r")
    if [[ -n ${ACCESS_LOG[$c]:-} ]]; then : >"${ACCESS_LOG[$c]}"; fi
    # The proxy's CPU and run-queue wait cover the warm-up too: the generator runs both in one go.
    local t0 c0 w0 t1 c1 w1
    t0=$(date +%s.%N) c0=$(proc_ticks "${mp[@]}") w0=$(runqueue_wait_ns "${mp[@]}")
    # Who used the proxy's core, second by second (core_sampler.py): its worker, its other
    # threads, or other programs; read against each second's p99 below.
    python3 "$HERE/core_sampler.py" --cpu "$PROXY_CPU" --out "$out.cpu" "${mp[@]}" &
    local sampler=$!
    timeout -s INT $((WARMUP + DURATION + 40)) taskset -c "$LOAD_CPU" "$OPEN_LOOP_BIN" \
        --url "http://127.0.0.1:${PORT[$c]}/" --rate "$RATE" --duration "$DURATION" \
        --connections "$CONNECTIONS" --warmup "$WARMUP" --per-second --json "${hdr[@]}" \
        >"$out" 2>"$out.stderr" &
    local pid=$! rc=0
    STARTED+=("$pid:INT")
    wait "$pid" || rc=$?
    unset 'STARTED[${#STARTED[@]}-1]'
    t1=$(date +%s.%N) c1=$(proc_ticks "${mp[@]}") w1=$(runqueue_wait_ns "${mp[@]}")
    kill -INT "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    # 3: the run is reported but flagged behind (the schedule was not kept); anything else fails.
    ((rc == 0 || rc == 3)) || { cat "$out.stderr" "$out" >&2; die "open_loop failed for $c (exit $rc)"; }
    local cpu waitpct
    cpu=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
    waitpct=$(awk -v a="$w0" -v b="$w1" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 / (t1 - t0) * 100 }')
    local row
    row=$(python3 - "$out" "$c" "$r" "$bg" "$cpu" "$waitpct" "$WARMUP" "$P99_LIMIT_MS" <<'EOF'
import json, sys
out, c, r, bg, cpu, waitpct, warmup, limit = sys.argv[1:]
j = json.load(open(out))
lat = j["latency_ms"] or {}
na = lambda v: "nan" if v is None else v
seconds = [s for s in j.get("per_second", []) if s["p99_ms"] is not None]
worst_s = max((s["p99_ms"] for s in seconds), default=None)
# The sampler's seconds count from the start of the warm-up, open_loop's from the measured
# window: a measured second is read with the sampler's seconds around it (±1 s).
try:
    cpu_s = json.load(open(out + ".cpu"))["per_second"]
except (OSError, ValueError, KeyError):
    cpu_s = []
measured = cpu_s[int(warmup):]
others_max = max((s["others_pct"] for s in measured), default=None)
helper = max(measured, key=lambda s: s["helper_pct"], default=None)
spikes = []
for s in seconds:
    if s["p99_ms"] > float(limit):
        near = [x for x in measured if abs(x["second"] - 1 - s["second"]) <= 1]
        spikes.append(f"s{s['second']} p99 {s['p99_ms']:.1f} ms: proxy "
            + "/".join(f"{x['proxy_pct']:.0f}" for x in near) + " %, others "
            + "/".join(f"{x['others_pct']:.0f}" for x in near) + " %, "
            + ", ".join(sorted({f"{x['helper']} {x['helper_pct']:.0f} %" for x in near})))
print("\t".join(map(str, [c, r, na(lat.get("p50")), na(lat.get("p99")), na(lat.get("p99_9")), na(lat.get("max")),
    j["achieved_rate"], int(j["behind"]), j["errors"], j["non_2xx"], j["generator_cpu_pct"],
    na((j["dispatch_lag_ms"] or {}).get("p99")), cpu, waitpct, bg, na(worst_s),
    ",".join(f"{k} {v}" for k, v in j["error_kinds"].items() if v) or "-",
    na(others_max), f"{helper['helper']} {helper['helper_pct']:.1f}" if helper else "-",
    "; ".join(spikes) or "-"])))
EOF
)
    printf '%s\n' "$row" >>"$RUNS"
    local f
    IFS=$'\t' read -r -a f <<<"$row"
    log "$(printf '%-12s round %d: p50 %s  p99 %s  p99.9 %s  max %s ms  achieved %s req/s%s  errors %s (%s)  non-2xx %s  generator CPU %s%%  proxy CPU %s%% (waited %s%%)  background %s%%' \
        "$c" "$r" "${f[2]}" "${f[3]}" "${f[4]}" "${f[5]}" "${f[6]}" "$( ((f[7])) && echo ' BEHIND')" "${f[8]}" "${f[16]}" "${f[9]}" "${f[10]}" "${f[12]}" "${f[13]}" "${f[14]}")"
}

for ((r = 1; r <= ROUNDS; r++)); do
    for c in "${CONTENDER_LIST[@]}"; do measure_round "$c" "$r"; done
done

# --- tables -------------------------------------------------------------------------------
TABLES=$(python3 - "$RUNS" "$P99_LIMIT_MS" "$P99_BUDGET_MS" "${CONTENDER_LIST[@]}" <<'EOF'
import math, statistics, sys
runs_file, limit, budget, order = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
cols = ["c", "r", "p50", "p99", "p999", "max", "achieved", "behind", "errors", "non2xx", "gen_cpu",
        "lag_p99", "cpu", "waitpct", "bg", "worst_s", "kinds", "others_max", "helper", "spikes"]
rows = []
for line in open(runs_file):
    v = dict(zip(cols, line.rstrip("\n").split("\t")))
    for k in cols[2:16] + ["others_max"]:
        v[k] = float(v[k])
    v["r"] = int(v["r"])
    rows.append(v)
by = {c: [x for x in rows if x["c"] == c] for c in order}
valid = {c: [x for x in by[c] if not x["behind"] and not math.isnan(x["p99"])] for c in order}
p99_of = {(x["c"], x["r"]): x["p99"] for x in rows if not x["behind"]}
f3 = lambda x: "n/a" if x is None or math.isnan(x) else f"{x:.3f}"
sd = lambda x: "n/a" if x is None else f"{x:+.3f}"
med = lambda xs: statistics.median(xs) if xs else None
def best(c):  # the round with the lowest p99
    return min(valid[c], key=lambda x: x["p99"]) if valid[c] else None
def diffs(c, ref):  # p99 − ref's p99, paired by round
    return [p99_of[(c, r)] - p99_of[(ref, r)] for r in sorted({x["r"] for x in valid[c]}) if (ref, r) in p99_of]

refs = [ref for ref in ("pingora", "nginx") if ref in order]
head = ["contender", "rounds (behind)", "p50 ms median (best)", "p99 ms median (best)", "p99.9 ms median (best)",
        "max ms median (worst)", f"rounds p99 > {limit:g} ms"]
head += [f"p99 − {ref} p99 ms, median (min–max) of rounds" for ref in refs]
head += ["achieved req/s (min)", "errors", "non-2xx", "proxy CPU %"]
print("| " + " | ".join(head) + " |")
print("|---|" + "---:|" * (len(head) - 1))
for c in order:
    v, b = valid[c], best(c)
    cells = [c, f"{len(by[c])} ({sum(1 for x in by[c] if x['behind'])})"]
    for k in ("p50", "p99", "p999"):
        cells.append(f"{f3(med([x[k] for x in v]))} ({f3(b[k] if b else None)})")
    cells.append(f"{f3(med([x['max'] for x in v]))} ({f3(max((x['max'] for x in v), default=None))})")
    cells.append(str(sum(1 for x in v if x["p99"] > limit)))
    for ref in refs:
        d = diffs(c, ref)
        cells.append("—" if c == ref else (f"{sd(med(d))} ({sd(min(d))}–{sd(max(d))})" if d else "n/a"))
    cells.append(f"{min(x['achieved'] for x in by[c]):.0f}")
    cells.append(f"{sum(x['errors'] for x in by[c]):.0f}")
    cells.append(f"{sum(x['non2xx'] for x in by[c]):.0f}")
    cells.append(f"{med([x['cpu'] for x in by[c]]):.0f}")
    print("| " + " | ".join(cells) + " |")

if "pingora" in order:
    print()
    print(f"Target (DESIGN.md): p99 within {budget:g} ms of bare Pingora's, best round against best round, "
          f"and no round with p99 over {limit:g} ms:")
    print()
    bp = best("pingora")
    for c in order:
        if c == "pingora":
            continue
        b = best(c)
        over = sum(1 for x in valid[c] if x["p99"] > limit)
        behind = sum(1 for x in by[c] if x["behind"])
        if b is None or bp is None:
            print(f"- {c}: no valid round")
            continue
        gap = b["p99"] - bp["p99"]
        if not c.startswith("portico"):  # nginx, HAProxy: references, not held to the budget
            print(f"- {c} (reference): best p99 {b['p99']:.3f} ms vs bare Pingora's {bp['p99']:.3f} ms: {gap:+.3f} ms; "
                  f"{over} round(s) over {limit:g} ms")
            continue
        ok = gap <= budget and over == 0 and behind == 0
        why = [] if ok else ([f"gap {gap:+.3f} ms"] if gap > budget else []) + \
            ([f"{over} round(s) over {limit:g} ms"] if over else []) + ([f"{behind} round(s) behind"] if behind else [])
        print(f"- {c}: best p99 {b['p99']:.3f} ms vs bare Pingora's {bp['p99']:.3f} ms: {gap:+.3f} ms; "
              f"{over} round(s) over {limit:g} ms: {'met' if ok else '**missed** (' + ', '.join(why) + ')'}")

print()
print("<details><summary>every measured round</summary>")
print()
rh = ["contender", "round", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "worst second's p99 ms"]
rh += [f"p99 − {ref} p99 ms" for ref in refs]
rh += ["achieved req/s", "behind", "errors (kinds)", "non-2xx", "generator CPU %", "pacer lag p99 ms",
       "proxy CPU %", "proxy waited %", "background CPU % before",
       "others on the proxy's core, worst second %", "busiest other proxy thread, worst second (%)"]
print("| " + " | ".join(rh) + " |")
print("|---|" + "---:|" * (len(rh) - 1))
for x in sorted(rows, key=lambda x: (x["r"], order.index(x["c"]))):
    cells = [x["c"], str(x["r"]), f3(x["p50"]), f3(x["p99"]), f3(x["p999"]), f3(x["max"]), f3(x["worst_s"])]
    for ref in refs:
        k = (ref, x["r"])
        cells.append("—" if x["c"] == ref else (sd(x["p99"] - p99_of[k]) if k in p99_of and not x["behind"] else "n/a"))
    cells += [f"{x['achieved']:.0f}", "**yes**" if x["behind"] else "no", f"{x['errors']:.0f}" + (f" ({x['kinds']})" if x["errors"] else ""), f"{x['non2xx']:.0f}",
              f"{x['gen_cpu']:.0f}", f3(x["lag_p99"]), f"{x['cpu']:.0f}", f"{x['waitpct']:.1f}", f"{x['bg']:.0f}",
              "n/a" if math.isnan(x["others_max"]) else f"{x['others_max']:.0f}", x["helper"]]
    print("| " + " | ".join(cells) + " |")
print()
print("</details>")
spiky = [x for x in rows if x["spikes"] != "-"]
if spiky:
    print()
    print(f"Seconds whose p99 passed {limit:g} ms, with the proxy's CPU %, other programs' CPU % on its core "
          "and the busiest other proxy thread, in that second and its neighbours (core_sampler.py):")
    print()
    for x in sorted(spiky, key=lambda x: (x["r"], order.index(x["c"]))):
        print(f"- {x['c']} round {x['r']}: {x['spikes']}")
EOF
)

# --- notes --------------------------------------------------------------------------------
NOTES=""
noisy=$(awk -F'\t' -v t="$QUIET_THRESHOLD" '$15 > t { n++ } END { print n + 0 }' "$RUNS")
if ((noisy > 0)); then
    NOTES+="- $noisy of $(wc -l <"$RUNS") rounds started while other processes used more than ${QUIET_THRESHOLD}% CPU (background column; the run was at nice $NICE): tail latency is the first thing such load distorts, so compare with a quiet run before trusting it."$'\n'
fi
behind=$(awk -F'\t' '$8 == 1 { n++ } END { print n + 0 }' "$RUNS")
if ((behind > 0)); then
    NOTES+="- **$behind round(s) fell behind** (achieved rate under 95 % of $RATE req/s): the generator or its $CONNECTIONS connections could not keep the schedule; those rounds are left out of the medians, best rounds and differences above."$'\n'
fi
for c in "${CONTENDER_LIST[@]}"; do
    [[ $c == portico* ]] || continue
    f=$TMP/${c/+/-}.log
    [[ -f $f ]] || continue
    NOTES+="- $c stderr/stdout: $(wc -l <"$f") lines, $(grep -cE '\b(WARN|ERROR)\b' "$f" || true) WARN/ERROR."$'\n'
done

# --- report -------------------------------------------------------------------------------
bench_machine
REPORT=$(
    printf '## %s — latency at %s req/s (latency.sh)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$RATE"
    printf -- '- commit %s; portico binary: %s (%s)\n' "$COMMIT" "$PORTICO_BIN" "$BIN_ORIGIN"
    printf -- '- machine: nproc %s, %s, kernel %s; nginx %s\n' "$NPROC" "$CPU_MODEL" "$(uname -r)" "$NGINX_VERSION"
    printf -- '- proxy on core %s; benches/open_loop.rs (one thread, %s keep-alive connections, %s req/s, latency from the scheduled send time) and the upstream nginx on core %s; %ss warm-up + %ss measured per round; %s interleaved rounds; all at nice %s%s\n\n' \
        "$PROXY_CPU" "$CONNECTIONS" "$RATE" "$LOAD_CPU" "$WARMUP" "$DURATION" "$ROUNDS" "$NICE" \
        "$( ((WANT_JWT)) && printf '; protected contenders get one RS256 token (%s bytes) as `Authorization: Bearer`' "${#TOKEN}")"
    printf '%s\n\n' "$TABLES"
    if [[ -n $NOTES ]]; then printf 'Notes:\n\n%s\n' "$NOTES"; fi
)
echo
printf '%s\n' "$REPORT"
bench_record "$REPORT"
