#!/usr/bin/env bash
# Load benchmark: portico against nginx proxy_pass on one shared upstream, and portico's
# protected path (RS256 JWT) against HAProxy's native jwt_verify and against a flood of
# forged tokens.
# See benches/load/README.md for the method and how to read the results.
#
#   benches/load/run.sh                        # MODE=load, ROUNDS=3, DURATION=10
#   ROUNDS=2 DURATION=5 benches/load/run.sh    # a quick run
#   MODE=memory benches/load/run.sh            # idle keep-alive connection memory
#   MODE=all benches/load/run.sh               # both
#
# Environment (defaults in brackets):
#   MODE [load]            load | memory | all
#   ROUNDS [3]             interleaved rounds (A B C A B C ...)
#   DURATION [10]          seconds per measured wrk run
#   WARMUP [2]             seconds of wrk warm-up before every measured run (0 = none)
#   CONNECTIONS [50]       wrk -c
#   CONTENDERS ["nginx portico portico+log"]   any subset of nginx pingora portico portico+log
#                          portico+resilience portico+nojwt portico+jwt portico+forged haproxy+jwt
#                          nginx+tls pingora+tls portico+tls (the plain contenders on a TLS
#                          listener, self-signed ECDSA P-256 certificate, HTTP/1.1 by ALPN)
#                          and portico~TAG variants (portico+nojwt is portico+jwt without its jwt
#                          plugin; portico+forged is portico+jwt sent a different forged token
#                          on every request),
#                          interleaved in the order given. pingora is the bare Pingora proxy
#                          (benches/bare_pingora.rs), pingora~ws the same with work
#                          stealing; portico~TAG is the plain portico contender
#                          with [server] keys from PORTICO_SERVER_TAG and/or the binary
#                          PORTICO_BIN_TAG (e.g. PORTICO_SERVER_nows="work_stealing = false")
#   MEM_CONNS [2000]       idle connections per proxy in MODE=memory; the script raises the
#                          open-file limit to fit them (the hard one too, as root with
#                          CAP_SYS_RESOURCE) and stops at once if it cannot
#   MEM_CYCLES [2]         open/close cycles per proxy in MODE=memory
#   MEM_SETTLE [2]         seconds between opening/closing and reading RSS
#   MEM_RELEASE_WAIT [20]  extra seconds before the last RSS read (allocator decay)
#   MEM_TRICKLE [10]       requests/s sent during MEM_RELEASE_WAIT (0 = none; see README)
#   MEM_SILENT [0]         1 = the connections send nothing (a connection before its first request)
#   NICE [-20 as root, else 0]  niceness of everything the script starts after the build, so
#                          that other sessions' builds on a shared machine yield the CPUs
#   QUIET_THRESHOLD [15]   CPU % (100 = one core) used by other processes that counts as busy
#   QUIET_WAIT [20, 0 when NICE < 0]  seconds to wait, before each run, for the machine to be quiet
#   PORTICO_BIN            use this binary instead of `cargo build --release`
#   BARE_BIN               use this bare_pingora executable instead of building it
#   BARE_WORK_STEALING [false] work stealing of the bare Pingora contender (portico's default)
#   NGINX_BIN [nginx]      nginx binary
#   HAPROXY_BIN [haproxy]  haproxy binary (haproxy+jwt only; 2.6+ for jwt_verify)
#   PROXY_CPU [0]          core the proxies run on
#   LOAD_CPU [1]           core wrk and the upstream run on
#   PORT_BASE [18000]      first port tried; every port is checked free on 127.0.0.1
#   RESULTS [benches/load/RESULTS.md]   where results are appended
#   RECORD [1]             0 = print only, do not append to RESULTS
#   KEEP_TMP [0]           1 = keep the temp dir (configs, logs, raw wrk output)
#   MAX_SECONDS            hard cap on the run after the build (default: estimate + 180)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BENCH=run.sh

MODE=${MODE:-load}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=1
CONTENDERS=${CONTENDERS:-"nginx portico portico+log"}
MEM_CONNS=${MEM_CONNS:-2000}
MEM_CYCLES=${MEM_CYCLES:-2}
MEM_SETTLE=${MEM_SETTLE:-2}
MEM_RELEASE_WAIT=${MEM_RELEASE_WAIT:-20}
MEM_TRICKLE=${MEM_TRICKLE:-10}
MEM_SILENT=${MEM_SILENT:-0}
if [[ $MODE != load ]]; then
    # The keep-alive deadline too: opening and settling 20,000 connections takes longer than
    # its 60 s default, which closed most of them before the measurement.
    PORTICO_LIMITS=$'[limits]\nmax_connections = 0\nfirst_byte_timeout = "600s"\nkeepalive_timeout = "600s"'
fi
# The setup shared with latency.sh: settings, contenders, upstream, token, cleanup.
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
bench_own_session "$@"

# --- inputs -------------------------------------------------------------------------------
bench_check_uints ROUNDS DURATION WARMUP CONNECTIONS MEM_CONNS MEM_CYCLES MEM_SETTLE MEM_RELEASE_WAIT MEM_TRICKLE
((ROUNDS >= 1)) || die "ROUNDS must be >= 1"
((DURATION >= 1)) || die "DURATION must be >= 1"
((CONNECTIONS >= 1)) || die "CONNECTIONS must be >= 1"
((MEM_CONNS >= 1 && MEM_CYCLES >= 1)) || die "MEM_CONNS and MEM_CYCLES must be >= 1"
case $MODE in load | memory | all) ;; *) die "MODE must be load, memory or all (got '$MODE')" ;; esac
bench_check_contenders
if [[ $MODE != load ]]; then bench_need_fds "$MEM_CONNS" "MEM_CONNS=$MEM_CONNS"; fi

# --- tools and binaries -------------------------------------------------------------------
bench_tools wrk
bench_portico_bin
bench_bare_bin
bench_renice

# --- time budget --------------------------------------------------------------------------
ncont=${#CONTENDER_LIST[@]}
estimate=15
quiet_slack=0
if [[ $MODE != memory ]]; then
    estimate=$((estimate + ROUNDS * ncont * (WARMUP + DURATION + 4)))
    quiet_slack=$((ROUNDS * ncont * QUIET_WAIT))
fi
if [[ $MODE != load ]]; then
    estimate=$((estimate + ncont * (WARMUP + 3 + MEM_CYCLES * (2 * MEM_SETTLE + MEM_RELEASE_WAIT + 5 + MEM_CONNS / 250))))
fi
MAX_SECONDS=${MAX_SECONDS:-$((estimate + quiet_slack + 180))}
bench_deadline "$MAX_SECONDS"
log "mode $MODE, contenders: ${CONTENDER_LIST[*]}; expected ~${estimate}s, capped at ${MAX_SECONDS}s"

# --- processes, configs, the token, checks -------------------------------------------------
bench_setup_tmp portico-load
bench_ports
bench_mint_token
bench_start_upstream
bench_start_contenders
bench_verify_contenders

# --- measuring ----------------------------------------------------------------------------
run_wrk() { # contender seconds outfile [wrk args...]
    timeout -s INT $(($2 + 30)) taskset -c "$LOAD_CPU" \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2"s --latency "${@:4}" "$(contender_url "$1")/" >"$3" 2>&1 &
    local pid=$! rc=0
    STARTED+=("$pid:INT")
    wait "$pid" || rc=$?
    unset 'STARTED[${#STARTED[@]}-1]'
    ((rc == 0)) || { cat "$3" >&2; die "wrk failed (exit $rc)"; }
}

# wrk output -> "rps p50_ms p99_ms requests non2xx socket_errors"
parse_wrk() {
    awk '
    function ms(v) {
        if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
        if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
        if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
        if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
        if (v ~ /h$/)  { sub(/h$/, "", v);  return v * 3600000 }
        return "nan"
    }
    BEGIN { rps = p50 = p99 = "nan"; reqs = non2xx = sock = 0 }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); sock = $4 + $6 + $8 + $10 }
    END { printf "%s %s %s %s %s %s\n", rps, p50, p99, reqs, non2xx, sock }' "$1"
}

RUNS=$TMP/runs.tsv
: >"$RUNS"
: >"$TMP/forged.tsv" # portico+forged: round, 401s, other answers
# wrk's extra arguments per contender: the token for the protected ones, and for
# portico+forged the script that forges a different token for every request.
wrk_args() { # contender
    if [[ $1 == portico+forged ]]; then
        printf '%s\n' -s "$HERE/forged.lua"
    elif is_protected "$1"; then
        printf '%s\n' -H "Authorization: Bearer $TOKEN"
    fi
}
measure_round() { # contender round
    local c=$1 r=$2 out="$TMP/wrk.$1.$2.txt"
    # shellcheck disable=SC2086
    local mp=(${MEASURE_PIDS[$c]}) wa
    mapfile -t wa < <(wrk_args "$c")
    check_deadline "$c round $r"
    local bg
    bg=$(wait_quiet "$c round $r")
    if ((WARMUP > 0)); then run_wrk "$c" "$WARMUP" "$TMP/wrk.$c.$r.warmup.txt" "${wa[@]}"; fi
    if [[ -n ${ACCESS_LOG[$c]:-} ]]; then : >"${ACCESS_LOG[$c]}"; fi
    local t0 c0 u0 w0 t1 c1 u1 w1
    t0=$(date +%s.%N) c0=$(proc_ticks "${mp[@]}") u0=$(proc_ticks "${UPSTREAM_WORKERS[@]}")
    w0=$(runqueue_wait_ns "${mp[@]}")
    times >"$TMP/times.before" # CPU of waited-for children: here, wrk's (via timeout)
    run_wrk "$c" "$DURATION" "$out" "${wa[@]}"
    times >"$TMP/times.after"
    t1=$(date +%s.%N) c1=$(proc_ticks "${mp[@]}") u1=$(proc_ticks "${UPSTREAM_WORKERS[@]}")
    w1=$(runqueue_wait_ns "${mp[@]}")
    local logged="-"
    if [[ -n ${ACCESS_LOG[$c]:-} ]]; then
        sleep 0.5 # let the writer thread drain its queue
        logged=$(wc -l <"${ACCESS_LOG[$c]}")
    fi
    local cpu load waitpct wrk_s
    waitpct=$(awk -v a="$w0" -v b="$w1" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 / (t1 - t0) * 100 }')
    cpu=$(awk -v a="$c0" -v b="$c1" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f", (b - a) / hz / (t1 - t0) * 100 }')
    wrk_s=$(awk 'function sec(v, p) { split(v, p, "m"); sub("s", "", p[2]); return p[1] * 60 + p[2] }
        FNR == 2 { t = sec($1) + sec($2); if (FILENAME ~ /after/) s += t; else s -= t } END { print s }' \
        "$TMP/times.before" "$TMP/times.after")
    load=$(awk -v a="$u0" -v b="$u1" -v w="$wrk_s" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f", ((b - a) / hz + w) / (t1 - t0) * 100 }')
    read -r rps p50 p99 reqs non2xx sock <<<"$(parse_wrk "$out")"
    [[ $rps != nan ]] || { cat "$out" >&2; die "could not parse wrk output for $c"; }
    if [[ $c == portico+forged ]]; then
        # 401 is the expected answer to a forged token: the non-2xx column counts the others
        # instead, and a forged token let through ends the run.
        local forged
        forged=$(awk '$1 == "forged:" { print $2, $4, $6 }' "$out")
        [[ -n $forged ]] || { cat "$out" >&2; die "no forged-token counts in the wrk output for $c"; }
        local f401 f2xx fother
        read -r f401 f2xx fother <<<"$forged"
        ((f2xx == 0)) || die "$c admitted $f2xx forged tokens (answered 2xx)"
        ((f401 > 0)) || { cat "$out" >&2; die "$c answered no forged token with 401"; }
        non2xx=$fother
        printf '%s\t%s\t%s\n' "$r" "$f401" "$fother" >>"$TMP/forged.tsv"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$c" "$r" "$rps" "$p50" "$p99" "$reqs" "$non2xx" "$sock" "$cpu" "$load" "$logged" "$bg" "$waitpct" >>"$RUNS"
    log "$(printf '%-12s round %d: %6.0f req/s  p50 %.3f ms  p99 %.3f ms  proxy CPU %s%% (waited %s%%)  wrk+upstream CPU %s%%  background %s%%  non-2xx %s  socket errors %s' \
        "$c" "$r" "$rps" "$p50" "$p99" "$cpu" "$waitpct" "$load" "$bg" "$non2xx" "$sock")"
}

col() { awk -F'\t' -v c="$1" -v k="$2" '$1 == c { print $k }' "$RUNS"; }
# req/s of contender $1 ÷ req/s of contender $2, one line per round: measured minutes apart
# at most, a pair shares the machine's speed of the moment, which drifts far more over a run.
round_ratios() {
    awk -F'\t' -v a="$1" -v b="$2" '$1 == a { x[$2] = $3 } $1 == b { y[$2] = $3 }
        END { for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r] }' "$RUNS"
}

LOAD_TABLE=""
PROTECTED_TABLE=""
LOAD_NOTES=""
LOAD_RUNS=""
run_load() {
    local r c
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in "${CONTENDER_LIST[@]}"; do measure_round "$c" "$r"; done
    done
    local base_rps="" base_p99=""
    if [[ " ${CONTENDER_LIST[*]} " == *" nginx "* ]]; then
        base_rps=$(col nginx 3 | median) base_p99=$(col nginx 5 | median)
    fi
    LOAD_TABLE="| contender | req/s (median) | req/s min–max | p50 ms | p99 ms | req/s ÷ nginx | p99 ÷ nginx | proxy CPU % | wrk+upstream CPU % | background CPU % (max) | non-2xx | socket errors |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for c in "${CONTENDER_LIST[@]}"; do
        local rps p50 p99 lo hi cpu load bgmax non2xx sock ratio p99r
        rps=$(col "$c" 3 | median) p50=$(col "$c" 4 | median) p99=$(col "$c" 5 | median)
        lo=$(col "$c" 3 | sort -g | head -n1) hi=$(col "$c" 3 | sort -g | tail -n1)
        cpu=$(col "$c" 9 | median) load=$(col "$c" 10 | median)
        bgmax=$(col "$c" 12 | sort -g | tail -n1)
        non2xx=$(col "$c" 7 | awk '{ s += $1 } END { print s + 0 }')
        sock=$(col "$c" 8 | awk '{ s += $1 } END { print s + 0 }')
        ratio=n/a p99r=n/a
        if [[ -n $base_rps ]]; then
            ratio=$(awk -v a="$rps" -v b="$base_rps" 'BEGIN { printf "%.2f×", a / b }')
            p99r=$(awk -v a="$p99" -v b="$base_p99" 'BEGIN { printf "%.2f×", a / b }')
        fi
        LOAD_TABLE+=$'\n'$(printf '| %s | %.0f | %.0f–%.0f | %.3f | %.3f | %s | %s | %.0f | %.0f | %s | %s | %s |' \
            "$c" "$rps" "$lo" "$hi" "$p50" "$p99" "$ratio" "$p99r" "$cpu" "$load" "$bgmax" "$non2xx" "$sock")
        if [[ -n ${ACCESS_LOG[$c]:-} ]]; then
            local lines reqs dropped
            lines=$(col "$c" 11 | awk '{ s += $1 } END { print s + 0 }')
            reqs=$(col "$c" 6 | awk '{ s += $1 } END { print s + 0 }')
            dropped=$(metric "${ADMIN[$c]}" portico_access_log_dropped_total)
            LOAD_NOTES+="- $c: $lines access-log lines for $reqs requests wrk counted in measured runs; portico_access_log_dropped_total = $dropped (whole process lifetime)."$'\n'
        fi
        if [[ $c == portico+forged ]]; then
            local n401 nother rej4xx
            n401=$(awk -F'\t' '{ s += $2 } END { print s + 0 }' "$TMP/forged.tsv")
            nother=$(awk -F'\t' '{ s += $3 } END { print s + 0 }' "$TMP/forged.tsv")
            rej4xx=$(metric "${ADMIN[$c]}" portico_requests_total 'status_class="4xx"')
            LOAD_NOTES+="- portico+forged: every request a different forged RS256 token (the valid token's header and claims, 256 random signature bytes below the modulus); $n401 answered 401 as expected, $nother otherwise (its non-2xx column counts those); portico_requests_total{status_class=\"4xx\"} = $rej4xx (whole process lifetime)."$'\n'
        fi
        if [[ $c == portico+jwt ]]; then
            local rej retries
            rej=$(metric "$JWT_ADMIN" portico_bulkhead_rejections_total)
            retries=$(metric "$JWT_ADMIN" portico_retries_total)
            LOAD_NOTES+="- portico+jwt: portico_bulkhead_rejections_total = $rej, portico_retries_total = $retries (whole process lifetime; both should be 0 or n/a, i.e. never incremented)."$'\n'
        fi
    done
    # The protected path against its budget (DESIGN.md, issue 4).
    if has_contender portico+jwt; then
        local jrps jp99 other orps op99 target what
        PROTECTED_TABLE="| contender vs | its req/s | contender req/s ÷ its (ratio of medians) | same, median of per-round ratios (min–max) | target | p99 ÷ its |
|---|---:|---:|---:|---:|---:|"
        local subject
        for other in portico+nojwt portico nginx haproxy+jwt portico+forged; do
            has_contender "$other" || continue
            subject=portico+jwt
            case $other in
            portico+nojwt) target="≥ 0.95" what="portico+jwt vs portico+nojwt (same route, token not checked)" ;;
            portico) target="≥ 0.95" what="portico+jwt vs portico (plain proxy path)" ;;
            nginx) target="≥ 0.90" what="portico+jwt vs nginx (plain proxy path)" ;;
            haproxy+jwt) target="≥ 1.50" what="portico+jwt vs haproxy+jwt (jwt_verify)" ;;
            portico+forged)
                # The other way round: the flood's rate as a share of the valid token's.
                subject=portico+forged other=portico+jwt
                target="≥ 0.50" what="**forged ÷ valid**: portico+forged (a different forged token per request) vs portico+jwt"
                ;;
            esac
            orps=$(col "$other" 3 | median) op99=$(col "$other" 5 | median)
            jrps=$(col "$subject" 3 | median) jp99=$(col "$subject" 5 | median)
            local pr prlo prhi
            pr=$(round_ratios "$subject" "$other" | median)
            prlo=$(round_ratios "$subject" "$other" | sort -g | head -n1)
            prhi=$(round_ratios "$subject" "$other" | sort -g | tail -n1)
            # The target is judged on the per-round ratio, the steadier of the two.
            PROTECTED_TABLE+=$'\n'$(awk -v w="$what" -v o="$orps" -v j="$jrps" -v t="$target" -v jp="$jp99" -v op="$op99" \
                -v pr="$pr" -v lo="$prlo" -v hi="$prhi" \
                'BEGIN { split(t, tt, " "); ok = (pr >= tt[2]) ? "met" : "**missed**";
                         printf "| %s | %.0f | %.2f× | %.3f× (%.2f–%.2f) | %s (%s) | %.2f× |", w, o, j / o, pr, lo, hi, t, ok, jp / op }')
        done
    fi
    LOAD_RUNS="| contender | round | req/s | p50 ms | p99 ms | requests | non-2xx | socket errors | proxy CPU % | proxy waited % | wrk+upstream CPU % | background CPU % before |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    LOAD_RUNS+=$'\n'$(awk -F'\t' '{ printf "| %s | %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $13, $10, $12 }' "$RUNS")
    local noisy
    noisy=$(awk -F'\t' -v t="$QUIET_THRESHOLD" '$12 > t { n++ } END { print n + 0 }' "$RUNS")
    if ((noisy > 0 && NICE >= 0)); then
        LOAD_NOTES+="- **$noisy of $(wc -l <"$RUNS") measured runs started while other processes used more than ${QUIET_THRESHOLD}% CPU** (background column), and the benchmark ran at normal priority: those numbers are depressed by CPU the benchmark did not control; rerun on a quiet machine (or as root, with NICE=-20) before drawing conclusions."$'\n'
    elif ((noisy > 0)); then
        LOAD_NOTES+="- $noisy of $(wc -l <"$RUNS") measured runs started while other processes used more than ${QUIET_THRESHOLD}% CPU (background column); the benchmark ran at nice $NICE so they yielded, but caches and wake-up latency are still shared: compare with a quiet run before trusting small differences, and look at \"proxy waited %\" (time the proxy's threads were runnable but not running; for portico+log and portico+jwt it includes waiting for their own log-writer thread)."$'\n'
    fi
}

MEM_TABLE=""
run_memory() {
    local c json="$TMP/memory.jsonl"
    : >"$json"
    for c in "${CONTENDER_LIST[@]}"; do
        check_deadline "memory $c"
        # shellcheck disable=SC2086
        local mp=(${MEASURE_PIDS[$c]}) args=() p wa
        for p in "${mp[@]}"; do args+=(--pid "$p"); done
        if is_protected "$c"; then args+=(--header "Authorization: Bearer $TOKEN"); fi
        if ((MEM_SILENT)); then args+=(--silent); fi
        if is_tls "$c"; then args+=(--tls); fi
        mapfile -t wa < <(wrk_args "$c")
        # Baseline after some traffic, so first-use buffers are not charged to connections.
        if [[ $MODE == memory && $WARMUP -gt 0 ]]; then run_wrk "$c" "$WARMUP" "$TMP/wrk.$c.mem-warmup.txt" "${wa[@]}"; fi
        log "memory: $MEM_CONNS idle keep-alive connections to $c, $MEM_CYCLES cycle(s)"
        # The client opens ~15,000 plaintext connections a second here, ~1,000 with TLS; the
        # rest of the margin is for a proxy slow to accept.
        local open_timeout=$((60 + MEM_CONNS / 100))
        local budget=$((MEM_CYCLES * (2 * MEM_SETTLE + MEM_RELEASE_WAIT + open_timeout + 30) + 10))
        timeout -s TERM "$budget" python3 "$HERE/idle_conns.py" --port "${PORT[$c]}" "${args[@]}" \
            -n "$MEM_CONNS" --timeout "$open_timeout" --cycles "$MEM_CYCLES" --settle "$MEM_SETTLE" \
            --release-wait "$MEM_RELEASE_WAIT" --trickle "$MEM_TRICKLE" >"$TMP/memory.$c.jsonl" 2>"$TMP/memory.$c.stderr" &
        local pid=$! rc=0
        STARTED+=("$pid:TERM")
        wait "$pid" || rc=$?
        unset 'STARTED[${#STARTED[@]}-1]'
        ((rc == 0)) || { cat "$TMP/memory.$c.stderr" >&2; die "idle_conns.py failed for $c (exit $rc)"; }
        sed "s/^{/{\"proxy\": \"$c\", /" "$TMP/memory.$c.jsonl" >>"$json"
        if [[ -s "$TMP/memory.$c.stderr" ]]; then
            log "memory client stderr for $c: $(sort "$TMP/memory.$c.stderr" | uniq -c | sort -rn | head -n 5)"
        fi
    done
    MEM_TABLE=$(python3 - "$json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| proxy | cycle | conns ok / alive | RSS before MiB | RSS open MiB | KiB per conn | RSS after close MiB | after wait MiB | kept after close | kept KiB per conn | given back? |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
mib = lambda k: f"{k / 1024:.1f}"
for r in rows:
    grown = r["rss_open_kib"] - r["rss_before_kib"]
    kept = r["retained_kib"]
    if grown <= 0 or r["ok"] == 0:
        verdict = "n/a (no growth)"
    elif kept <= 0.2 * grown:
        verdict = "yes"
    elif kept < 0.8 * grown:
        verdict = "partly"
    else:
        verdict = "no"
    share = f" ({100 * kept / grown:.0f}%)" if grown > 0 else ""
    kpc = r["kib_per_conn"]
    print(f"| {r['proxy']} | {r['cycle']} | {r['ok']} / {r['alive_at_close']} | {mib(r['rss_before_kib'])} | "
          f"{mib(r['rss_open_kib'])} | {kpc if kpc is not None else 'n/a'} | {mib(r['rss_after_kib'])} | "
          f"{mib(r['rss_after_wait_kib'])} | {kept} KiB{share} | "
          f"{kept / r['ok'] if r['ok'] else float('nan'):.3f} | {verdict} |")
EOF
)
}

case $MODE in
load) run_load ;;
memory) run_memory ;;
all) run_load; run_memory ;;
esac

# --- portico's own log ----------------------------------------------------------------------
PORTICO_LOG_NOTES=""
for c in portico portico+tls portico+log portico+nojwt portico+jwt portico+forged; do
    [[ " ${CONTENDER_LIST[*]} " == *" $c "* ]] || continue
    f=$TMP/${c/+/-}.log
    n=$(wc -l <"$f")
    w=$(grep -cE '\b(WARN|ERROR)\b' "$f" || true)
    PORTICO_LOG_NOTES+="- $c stderr/stdout: $n lines, $w WARN/ERROR."
    if ((w > 0)); then
        # Most frequent messages, timestamps stripped.
        PORTICO_LOG_NOTES+=" Most frequent:"$'\n'
        PORTICO_LOG_NOTES+=$(grep -E '\b(WARN|ERROR)\b' "$f" | sed -E 's/^\[[^ ]+ //; s/[0-9]+/N/g' |
            sort | uniq -c | sort -rn | head -n 5 | sed -E 's/^ *([0-9]+) /  - \1× /')
    fi
    PORTICO_LOG_NOTES+=$'\n'
done
for f in "$TMP"/upstream.error.log "$TMP"/nginx-proxy.error.log "$TMP"/nginx-tls.error.log "$TMP"/haproxy-jwt.log; do
    if [[ -s $f ]]; then
        PORTICO_LOG_NOTES+="- $(basename "$f"): $(wc -l <"$f") lines, e.g. $(tail -n1 "$f" | cut -c1-200)"$'\n'
    fi
done

# --- report -------------------------------------------------------------------------------
bench_machine
WRK_VERSION=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true) # wrk -v exits 1
REPORT=$(
    printf '## %s — MODE=%s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$MODE"
    printf -- '- commit %s; portico binary: %s (%s)\n' "$COMMIT" "$PORTICO_BIN" "$BIN_ORIGIN"
    printf -- '- machine: nproc %s, %s, kernel %s; nginx %s, wrk %s\n' "$NPROC" "$CPU_MODEL" "$(uname -r)" "$NGINX_VERSION" "$WRK_VERSION"
    if ((WANT_JWT)); then
        printf -- '- protected path: one RS256 token (RSA-2048, %s bytes; iss, aud, sub, exp, iat, scope) sent by wrk as `Authorization: Bearer`; %s%s\n' \
            "${#TOKEN}" "$(has_contender portico+jwt && echo 'portico+jwt = jwt plugin (local PEM key, iss/aud/exp/sub checks, verified-token cache) + request-id + access log to a file + route retry policy + cluster bulkhead + metrics; ')$(has_contender portico+forged && echo 'portico+forged = portico+jwt sent a different forged token per request (forged.lua: right header and claims, random signature); ')" \
            "$(has_contender haproxy+jwt && echo "haproxy+jwt = HAProxy $HAPROXY_VERSION, nbthread 1, jwt_verify + iss/aud/exp checks on every request, http-reuse always, no log; ")OpenSSL $(openssl version | awk '{ print $2 }')"
    fi
    if [[ $MODE != memory ]]; then
        printf -- '- load: proxy on core %s; wrk -t%s -c%s -d%ss --latency and the upstream nginx on core %s; %ss warm-up before each run; %s interleaved rounds; medians; all at nice %s\n\n' \
            "$PROXY_CPU" "$WRK_THREADS" "$CONNECTIONS" "$DURATION" "$LOAD_CPU" "$WARMUP" "$ROUNDS" "$NICE"
        printf '%s\n\n' "$LOAD_TABLE"
        if [[ -n $PROTECTED_TABLE ]]; then
            printf 'Protected path (medians of this run):\n\n%s\n\n' "$PROTECTED_TABLE"
        fi
        printf '<details><summary>every measured run</summary>\n\n%s\n\n</details>\n\n' "$LOAD_RUNS"
    fi
    if [[ $MODE != load ]]; then
        what="one GET each, kept open"
        ((MEM_SILENT)) && what="silent: nothing sent, before any request"
        printf -- '- memory: %s idle keep-alive connections per proxy (%s), %s cycle(s); RSS read %ss after opening, %ss after closing and again %ss later (with %s req/s of trickle traffic in between); open-file limit %s\n\n' \
            "$MEM_CONNS" "$what" "$MEM_CYCLES" "$MEM_SETTLE" "$MEM_SETTLE" "$MEM_RELEASE_WAIT" "$MEM_TRICKLE" "$(ulimit -Sn)"
        if ((WANT_TLS)); then
            printf -- '- +tls contenders: the same proxy on a TLS listener (self-signed ECDSA P-256 certificate; client: Python %s ssl on %s, ALPN http/1.1, no session resumption); a connection is counted once its handshake is done\n\n' \
                "$(python3 -c 'import platform; print(platform.python_version())')" "$(python3 -c 'import ssl; print(ssl.OPENSSL_VERSION)')"
        fi
        printf '%s\n\n' "$MEM_TABLE"
    fi
    if [[ -n $LOAD_NOTES$PORTICO_LOG_NOTES ]]; then
        printf 'Notes:\n\n%s%s\n' "$LOAD_NOTES" "$PORTICO_LOG_NOTES"
    fi
)
echo
printf '%s\n' "$REPORT"
bench_record "$REPORT"
