#!/usr/bin/env bash
# The soak (issue 14, item 6): portico under steady mixed traffic for SOAK_MINUTES (30), with a
# config reload every minute, one upstream instance flapping every few minutes and one
# graceful binary upgrade halfway. Every window (a minute) it records the serving gateway
# process's RSS, open fds and threads, and the window's p50/p99/max and failures; at the end
# it prints the table, checks the targets (RSS growth < 5 % after the warm-up, no fd or thread
# growth, no failed request but the intended 401/403/429) and writes a CSV and a PNG plot.
# See benches/soak/README.md.
#
#   benches/soak/soak.sh                                  # 30 minutes (+ the builds)
#   SOAK_MINUTES=4 SAMPLE_SECONDS=20 RELOAD_SECONDS=20 FLAP_SECONDS=60 FLAP_DOWN_SECONDS=10 \
#     WARM_MINUTES=1 RECORD=0 benches/soak/soak.sh         # a short run with everything scaled down
#
# Environment (defaults in brackets):
#   SOAK_MINUTES [30]        how long the traffic runs
#   SAMPLE_SECONDS [60]      one row (process figures, latency, failures) per this many seconds
#   RATE [1500]              requests per second, open loop (benches/open_loop.rs, --mix)
#   CONNECTIONS [32]         the generator's keep-alive connections
#   RELOAD_SECONDS [60]      a config reload (POST /admin/reload) this often, alternating two configs
#   FLAP_SECONDS [240]       the third upstream instance is stopped this often ...
#   FLAP_DOWN_SECONDS [20]   ... for this long, then started again
#   UPGRADE_AT_SECONDS [half the run + SAMPLE_SECONDS/6]  graceful binary upgrade then (0 = none)
#   WARM_MINUTES [5]         samples before this (from the start, and from the upgrade for the
#                            new process) are not held to the growth targets
#   RSS_GROWTH_PCT [5]       target: RSS growth of each process after its warm-up, at most
#   FD_SLACK [8]             fds the last sample may exceed the first after warm-up by (pooled
#                            connections come and go; a leak grows past any fixed slack)
#   THREAD_SLACK [2]         the same for threads (tokio's blocking pool parks threads for 10 s)
#   GATEWAY_THREADS [2]      [server] threads
#   PORTICO_BIN              the gateway binary (default: cargo build --release --bin portico)
#   PORTICO_BIN_UPGRADE      the binary the upgrade starts (default: PORTICO_BIN again)
#   OPEN_LOOP_BIN            the generator (default: cargo build --release --bench open_loop)
#   OUT_DIR [target/soak/<UTC time>]   soak.csv, soak.png, report.md, the logs
#   RECORD [1]               1 = append the report to benches/load/RESULTS.md and copy the PNG there
#   and, as benches/load/run.sh: NICE, NGINX_BIN, PORT_BASE, KEEP_TMP, MAX_SECONDS
#   (default: the run + 10 minutes).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BENCH=soak.sh

SOAK_MINUTES=${SOAK_MINUTES:-30}
SAMPLE_SECONDS=${SAMPLE_SECONDS:-60}
RATE=${RATE:-1500}
CONNECTIONS=${CONNECTIONS:-32}
RELOAD_SECONDS=${RELOAD_SECONDS:-60}
FLAP_SECONDS=${FLAP_SECONDS:-240}
FLAP_DOWN_SECONDS=${FLAP_DOWN_SECONDS:-20}
UPGRADE_AT_SECONDS=${UPGRADE_AT_SECONDS:-$((SOAK_MINUTES * 30 + SAMPLE_SECONDS / 6))}
WARM_MINUTES=${WARM_MINUTES:-5}
RSS_GROWTH_PCT=${RSS_GROWTH_PCT:-5}
FD_SLACK=${FD_SLACK:-8}
THREAD_SLACK=${THREAD_SLACK:-2}
GATEWAY_THREADS=${GATEWAY_THREADS:-2}
OUT_DIR=${OUT_DIR:-$REPO/target/soak/$(date -u +%Y%m%d-%H%M%S)}
# The load benchmark's setup: tools, binaries, ports, the token, nginx, cleanup, CPU samples.
CONTENDERS=portico
LOAD_DIR=$REPO/benches/load
# shellcheck source=benches/load/lib.sh
HERE=$LOAD_DIR source "$LOAD_DIR/lib.sh"
bench_own_session "$@"

# --- inputs -------------------------------------------------------------------------------
bench_check_uints SOAK_MINUTES SAMPLE_SECONDS RATE CONNECTIONS RELOAD_SECONDS FLAP_SECONDS \
    FLAP_DOWN_SECONDS UPGRADE_AT_SECONDS WARM_MINUTES RSS_GROWTH_PCT FD_SLACK THREAD_SLACK GATEWAY_THREADS
DURATION=$((SOAK_MINUTES * 60))
((SOAK_MINUTES >= 1 && SAMPLE_SECONDS >= 5 && RATE >= 1 && CONNECTIONS >= 1 && GATEWAY_THREADS >= 1)) ||
    die "SOAK_MINUTES, RATE, CONNECTIONS, GATEWAY_THREADS must be >= 1 and SAMPLE_SECONDS >= 5"
((DURATION % SAMPLE_SECONDS == 0)) || die "SOAK_MINUTES * 60 must be a multiple of SAMPLE_SECONDS"
((RELOAD_SECONDS == 0 || RELOAD_SECONDS >= 5)) || die "RELOAD_SECONDS must be 0 (none) or >= 5"
((FLAP_SECONDS == 0 || FLAP_SECONDS > FLAP_DOWN_SECONDS)) || die "FLAP_SECONDS must be 0 (none) or > FLAP_DOWN_SECONDS"
((UPGRADE_AT_SECONDS < DURATION)) || die "UPGRADE_AT_SECONDS must be within the run (< $DURATION)"
bench_check_contenders
WANT_JWT=1

# --- tools and binaries -------------------------------------------------------------------
bench_tools
command -v openssl >/dev/null || die "missing tool: openssl"
bench_portico_bin
PORTICO_BIN_UPGRADE=${PORTICO_BIN_UPGRADE:-$PORTICO_BIN}
[[ -x $PORTICO_BIN_UPGRADE ]] || die "PORTICO_BIN_UPGRADE=$PORTICO_BIN_UPGRADE is not an executable"
if [[ -n ${OPEN_LOOP_BIN:-} ]]; then
    [[ -x $OPEN_LOOP_BIN ]] || die "OPEN_LOOP_BIN=$OPEN_LOOP_BIN is not an executable"
else
    log "building the open-loop generator (cargo build --release --bench open_loop)"
    OPEN_LOOP_BIN=$(cargo_bench_bin open_loop) || die "cannot build benches/open_loop.rs"
    [[ -x $OPEN_LOOP_BIN ]] || die "no open_loop executable"
fi
# The plot: matplotlib, from PyPI when it is missing (a missing plot fails no target).
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib (pip) for the plot"
    python3 -m pip install --quiet matplotlib >&2 || log "matplotlib could not be installed: no plot"
fi
bench_renice

MAX_SECONDS=${MAX_SECONDS:-$((DURATION + 600))}
bench_deadline "$MAX_SECONDS"
mkdir -p "$OUT_DIR"
log "soak: $SOAK_MINUTES min at $RATE req/s, a row every ${SAMPLE_SECONDS}s, reload every ${RELOAD_SECONDS}s, flap every ${FLAP_SECONDS}s for ${FLAP_DOWN_SECONDS}s, upgrade at ${UPGRADE_AT_SECONDS}s; out: $OUT_DIR"

# --- processes, configs, tokens -----------------------------------------------------------
bench_setup_tmp portico-soak
ports=$(free_ports 5) || die "cannot find 5 free ports from $PORT_BASE"
read -r GW_PORT GW_ADMIN UP1 UP2 UP3 <<<"$ports"
UP_PORTS=("$UP1" "$UP2" "$UP3")
bench_mint_token # TOKEN (valid for ten years), FORGED_SIGNED, JWT_PRIVKEY/JWT_PUBKEY

# More tokens of the same issuer, issued two hours ago: one expired an hour ago (beyond any
# leeway), the rate-limited client's, and the operator's (the scope /api/ops wants).
now=$(date +%s)
claims() { # sub client_id scope exp
    printf '{"iss":"%s","aud":"%s","sub":"%s","client_id":"%s","scope":"%s","iat":%d,"exp":%d}' \
        "$JWT_ISSUER" "$JWT_AUDIENCE" "$1" "$2" "$3" $((now - 7200)) "$4"
}
EXPIRED=$(sign_token "$(claims service-a service-a "bench:read" $((now - 3600)))")
GREEDY=$(sign_token "$(claims service-greedy service-greedy "bench:read" $((now + 86400)))")
OPERATOR=$(sign_token "$(claims operator operator "soak:admin" $((now + 86400)))")
# A forged token per request: the valid header and claims, and a signature of the right
# length (342 base64url characters for RSA-2048) whose first character keeps it below the
# modulus, whose characters 2-9 are the request's sequence number, and whose last one has
# its unused low bits zero (canonical base64url, which the gateway insists on).
FORGED_TEMPLATE=$(python3 -c 'import random, string, sys
a = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
print(sys.argv[1] + "." + random.choice(a[:16]) + "{seq}" + "".join(random.choice(a) for _ in range(332)) + random.choice(a[::16]))' "$FORGED_SIGNED")

# The request mix: class, weight (share of RATE), path, Authorization header or "", statuses.
MIX=(
    "items 30 /api/items/42 $TOKEN 200"
    "orders 20 /api/orders?page=1 $TOKEN 200"
    "public 10 /public/ping - 200"
    "operator 5 /api/ops/1 $OPERATOR 200"
    "limited 10 /api/limited/x $GREEDY 200,429"
    "expired 8 /api/items/7 $EXPIRED 401"
    "forged 8 /api/orders $FORGED_TEMPLATE 401"
    "missing 4 /api/orders - 401"
    "noscope 5 /api/ops/1 $TOKEN 403"
)
python3 - "$TMP/mix.json" "${MIX[@]}" >/dev/null <<'EOF'
import json, sys
classes = []
for line in sys.argv[2:]:
    name, weight, path, token, expect = line.split(" ")
    classes.append({"name": name, "weight": int(weight), "path": path,
                    "headers": [] if token == "-" else ["Authorization: Bearer " + token],
                    "expect": [int(s) for s in expect.split(",")]})
json.dump(classes, open(sys.argv[1], "w"), indent=1)
EOF

# The admin token: a file only its owner reads, as the gateway insists.
(umask 077 && openssl rand -hex 32 >"$TMP/admin.token")
printf 'Authorization: Bearer %s\n' "$(<"$TMP/admin.token")" >"$TMP/admin.header"
chmod 600 "$TMP/admin.header"

# Two configs a reload alternates between; the gateway reads the live one. The limited
# client sends a tenth of RATE; its limit is a fortieth or a twenty-fifth (at 1,500 req/s:
# 150 req/s against 37 or 60), so it gets both 200 and 429 in every minute.
LIMIT_A=$(((RATE + 39) / 40)) LIMIT_B=$(((RATE + 24) / 25))
for variant in a b; do
    if [[ $variant == a ]]; then rate=$LIMIT_A lb=round_robin; else rate=$LIMIT_B lb=least_request; fi
    render "$HERE/portico.soak.toml.tmpl" "$TMP/portico.$variant.toml" DIR="$TMP" PORT="$GW_PORT" \
        ADMIN_PORT="$GW_ADMIN" THREADS="$GATEWAY_THREADS" UP1="$UP1" UP2="$UP2" UP3="$UP3" \
        ISSUER="$JWT_ISSUER" AUDIENCE="$JWT_AUDIENCE" PUBKEY="$JWT_PUBKEY" VARIANT="$variant" \
        LIMIT_RATE="$rate" LB="$lb"
    "$PORTICO_BIN" check -c "$TMP/portico.$variant.toml" >/dev/null || die "portico rejects $TMP/portico.$variant.toml"
done
LIVE=$TMP/portico.toml
cp "$TMP/portico.a.toml" "$LIVE"
VARIANT=a

# --- upstreams ------------------------------------------------------------------------------
declare -A UP_PID
start_upstream() { # index 1..3
    local i=$1 dir=$TMP/up$1
    mkdir -p "$dir/upstream.tmp"
    render "$LOAD_DIR/upstream.nginx.conf.tmpl" "$dir/upstream.conf" DIR="$dir" PORT="${UP_PORTS[i - 1]}"
    start_nginx "up$i" "$dir/upstream.conf" "$LOAD_CPU"
    UP_PID[$i]=$started_pid
    wait_http "http://127.0.0.1:${UP_PORTS[i - 1]}/" "$started_pid" "upstream $i" 10
}
# Stops an upstream with nginx's fast shutdown: its connections close at once, in-flight
# requests on them included; the gateway must retry those on the other instances.
stop_upstream() { # index
    local i=$1 pid=${UP_PID[$1]} until=$((SECONDS + 10))
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < until)); do sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
    UP_PID[$i]=""
}
# A process of ours that has exited: the cleanup must not signal its pid, now anyone's.
forget() { # pid
    local j
    for j in "${!STARTED[@]}"; do [[ ${STARTED[j]} == "$1:"* ]] && unset 'STARTED[j]'; done
    STARTED=("${STARTED[@]}")
}
for i in 1 2 3; do start_upstream "$i"; done
log "upstreams on 127.0.0.1:$UP1, :$UP2 and :$UP3 (the last one flaps)"

# --- the gateway ----------------------------------------------------------------------------
GW_N=0       # processes started so far; their logs are gateway.N.log
GW_ALL=()    # their pids
start_gateway() { # binary [serve flags...] -> sets GW_NEW
    GW_N=$((GW_N + 1))
    "$1" serve -c "$LIVE" "${@:2}" >"$TMP/gateway.$GW_N.log" 2>&1 &
    GW_NEW=$!
    GW_ALL+=("$GW_NEW")
    # SIGTERM, the graceful stop (within graceful_shutdown_timeout_seconds = 5): SIGINT's
    # fast shutdown does not end a portico that is still being sent requests (it spins on
    # failed accepts, logging each), and the generator may still be sending when we stop.
    STARTED+=("$GW_NEW:TERM")
}
# /readyz 200 from that very process (during an upgrade both answer on the admin port).
wait_ready() { # pid seconds
    local until=$((SECONDS + $2)) body
    while ((SECONDS < until)); do
        kill -0 "$1" 2>/dev/null || return 1
        body=$(curl -fsS --max-time 1 "http://127.0.0.1:$GW_ADMIN/readyz" 2>/dev/null) &&
            [[ $(grep -o '"pid": *[0-9]*' <<<"$body" | grep -o '[0-9]*$') == "$1" ]] && return 0
        sleep 0.1
    done
    return 1
}
start_gateway "$PORTICO_BIN"
GW_PID=$GW_NEW
wait_ready "$GW_PID" 30 || { tail -n 30 "$TMP/gateway.1.log" >&2; die "the gateway was not ready within 30 s"; }
log "gateway on 127.0.0.1:$GW_PORT (admin $GW_ADMIN), pid $GW_PID, $GATEWAY_THREADS threads"

# Every class must get its answer before the soak starts (the rate-limited one its 200).
for line in "${MIX[@]}"; do
    read -r name _ path token expect <<<"$line"
    auth=()
    [[ $token == - ]] || auth=(-H "Authorization: Bearer ${token//\{seq\}/AAAAAAAA}")
    status=$(http_status "http://127.0.0.1:$GW_PORT$path" "${auth[@]}")
    [[ ,$expect, == *",$status,"* ]] || die "class $name: $path answered $status instead of $expect"
done
log "every class gets its status: $(printf '%s ' "${MIX[@]}" | awk '{ for (i = 1; i <= NF; i += 5) printf "%s %s  ", $i, $(i + 4) }')"

# --- the schedule -----------------------------------------------------------------------------
EVENTS=$OUT_DIR/events.tsv # t_s, event, detail
SAMPLES=$OUT_DIR/samples.tsv
printf 't_s\tevent\tdetail\n' >"$EVENTS"
printf 'sample\tt_s\tpid\tgateways\trss_kib\tfds\tthreads\tgateway_cpu_pct\tbackground_cpu_pct\n' >"$SAMPLES"
OPS_FAILED=0
# Time in microseconds from EPOCHREALTIME, in bash arithmetic: the schedule's loop checks it
# five times a second, and forks would count as other processes' CPU.
now_us() { NOW_US=${EPOCHREALTIME/./}; }
elapsed() { # seconds since the start, to 0.1
    local d
    now_us
    d=$(((NOW_US - T0_US) / 100000))
    printf '%d.%d' $((d / 10)) $((d % 10))
}
since() { # a start time (µs) -> seconds since, to 0.1
    local d
    now_us
    d=$(((NOW_US - $1) / 100000))
    printf '%d.%d' $((d / 10)) $((d % 10))
}
event() { # name detail
    printf '%s\t%s\t%s\n' "$(elapsed)" "$1" "$2" >>"$EVENTS"
    log "$1: $2"
}
op_failed() { # name detail
    OPS_FAILED=$((OPS_FAILED + 1))
    event "$1 FAILED" "$2"
}

reload() {
    local next body status version
    if [[ $VARIANT == a ]]; then next=b; else next=a; fi
    cp "$TMP/portico.$next.toml" "$LIVE"
    body=$(curl -sS --max-time 60 -X POST -H @"$TMP/admin.header" -w '\n%{http_code}' \
        "http://127.0.0.1:$GW_ADMIN/admin/reload" 2>&1) || true
    status=${body##*$'\n'}
    version=$(grep -o '"version": *"[0-9a-f]*"' <<<"$body" | grep -o '[0-9a-f]*"$' | tr -d '"' || true)
    if [[ $status == 200 ]]; then
        VARIANT=$next
        event reload "config $next, version ${version:-?}"
    else
        op_failed reload "config $next: $status ${body%$'\n'*}"
    fi
}

# The graceful upgrade as systemd/portico-upgrade does it, with the new process kept in the
# foreground (a child of this script, so that it is followed and stopped like the first).
upgrade() {
    local old=$GW_PID new until rc t_start
    now_us
    t_start=$NOW_US
    "$PORTICO_BIN_UPGRADE" check -c "$LIVE" >/dev/null || { op_failed upgrade "the new binary rejects $LIVE"; return; }
    rm -f "$TMP/upgrade.sock"
    start_gateway "$PORTICO_BIN_UPGRADE" -u
    new=$GW_NEW
    until=$((SECONDS + 30))
    until [[ -S $TMP/upgrade.sock ]]; do
        if ! kill -0 "$new" 2>/dev/null || ((SECONDS >= until)); then
            kill -INT "$new" 2>/dev/null || true
            op_failed upgrade "the new process (pid $new) did not wait on the upgrade socket; pid $old keeps serving"
            return
        fi
        sleep 0.05
    done
    kill -QUIT "$old"
    if ! wait_ready "$new" 30; then
        op_failed upgrade "the new process (pid $new) was not ready within 30 s"
        return
    fi
    GW_PID=$new
    event upgrade "pid $old -> $new, ready $(since "$t_start") s after it began"
    # The old process drains (grace_period_seconds = 10) and must exit 0.
    until=$((SECONDS + 30))
    while kill -0 "$old" 2>/dev/null && ((SECONDS < until)); do sleep 0.1; done
    if kill -0 "$old" 2>/dev/null; then
        op_failed upgrade "the old process (pid $old) still runs 30 s after SIGQUIT"
        return
    fi
    rc=0
    wait "$old" || rc=$?
    forget "$old"
    if ((rc == 0)); then
        event drained "pid $old exited 0, $(since "$t_start") s after the upgrade began"
    else
        op_failed upgrade "the old process (pid $old) exited $rc"
    fi
}

# Process figures of the serving gateway, and CPU use over the last sample period: the
# gateway processes', and other processes' (the machine's busy time less everything this
# script runs), as run.sh records before each run.
CLK_TCK=$(getconf CLK_TCK)
alive_gateways() { local p; for p in "${GW_ALL[@]}"; do kill -0 "$p" 2>/dev/null && echo "$p"; done; }
our_pids() { # this script, the gateways, the generator, the upstream nginx masters and workers
    local p
    echo $$
    for p in $(alive_gateways) "$GEN_PID" "${UP_PID[@]}"; do
        [[ -n $p ]] || continue
        echo "$p"
        pgrep -P "$p" || true
    done | sort -u
}
# CPU ticks (user + system) each of these processes used since the previous call, in
# TICKS_DELTA[pid] and summed in TICKS_SUM: a process new since then counts whole, one gone
# since then is left out (its last moments with it).
declare -A TICKS_BEFORE TICKS_DELTA
ticks_since() { # pids...
    local p now
    local -A now_of
    TICKS_DELTA=() TICKS_SUM=0
    for p in "$@"; do
        now=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{ print $12 + $13 }') || continue
        [[ -n $now ]] || continue
        now_of[$p]=$now
        TICKS_DELTA[$p]=$((now - ${TICKS_BEFORE[$p]:-0}))
        TICKS_SUM=$((TICKS_SUM + TICKS_DELTA[$p]))
    done
    TICKS_BEFORE=()
    for p in "${!now_of[@]}"; do TICKS_BEFORE[$p]=${now_of[$p]}; done
}
machine_ticks() { awk '/^cpu / { for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6 }' /proc/stat; }
PREV_MACHINE="" PREV_T=""
sample() { # index (0: only the CPU counters' starting point)
    local pid=$GW_PID rss fds threads gateways m ours gw t cpu_gw cpu_bg p
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo nan)
    threads=$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo nan)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    gateways=$(alive_gateways | wc -l)
    mapfile -t pids < <(our_pids)
    # The gateways' ticks first (from the same reading as everyone's), then everything ours.
    m=$(machine_ticks) t=$EPOCHREALTIME
    ticks_since "${pids[@]}"
    ours=$TICKS_SUM gw=0
    for p in $(alive_gateways); do gw=$((gw + ${TICKS_DELTA[$p]:-0})); done
    cpu_gw=nan cpu_bg=nan
    if (($1 > 0)); then
        # Busy ticks of the whole machine less ours, as % of one core (100 = one core).
        read -r cpu_gw cpu_bg < <(awk -v m0="$PREV_MACHINE" -v m1="$m" -v o="$ours" -v g="$gw" \
            -v t0="$PREV_T" -v t1="$t" -v hz="$CLK_TCK" 'BEGIN {
                split(m0, a, " "); split(m1, b, " "); busy = (b[1] - a[1]) - (b[2] - a[2])
                dt = t1 - t0; other = (busy - o) / hz / dt * 100; if (other < 0) other = 0
                printf "%.0f %.0f\n", g / hz / dt * 100, other }')
    fi
    PREV_MACHINE=$m PREV_T=$t
    (($1 > 0)) || return 0
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$(elapsed)" "$pid" "$gateways" "$rss" "$fds" "$threads" \
        "$cpu_gw" "$cpu_bg" >>"$SAMPLES"
    log "$(printf 'sample %d: pid %s RSS %s KiB, %s fds, %s threads; gateway CPU %s%%, other processes %s%%' \
        "$1" "$pid" "$rss" "$fds" "$threads" "$cpu_gw" "$cpu_bg")"
    tail -n 1 "$OUT_DIR/generator.stderr" 2>/dev/null | grep -q 'window' && log "$(tail -n 1 "$OUT_DIR/generator.stderr")"
    return 0
}

# --- the run ----------------------------------------------------------------------------------
# The traffic goes on 10 s past the last sample, which is then taken under load like the
# others (at the schedule's end the generator closes its connections: 32 fds fewer).
"$OPEN_LOOP_BIN" --url "http://127.0.0.1:$GW_PORT/" --mix "$TMP/mix.json" --rate "$RATE" \
    --duration $((DURATION + 10)) --connections "$CONNECTIONS" --warmup 0 --window "$SAMPLE_SECONDS" --json \
    >"$OUT_DIR/generator.json" 2>"$OUT_DIR/generator.stderr" &
GEN_PID=$!
STARTED+=("$GEN_PID:TERM")
now_us
T0_US=$NOW_US
sample 0
event start "generator pid $GEN_PID, gateway pid $GW_PID"

at() { echo $((T0_US + $1 * 1000000)); } # seconds from the start -> µs
past() { now_us && ((NOW_US >= $1)); }
NEVER=$((1 << 62))
# Events fall between samples: reloads half a period in, flaps a quarter of theirs.
next_reload=$NEVER next_flap=$NEVER next_up=$NEVER next_upgrade=$NEVER
((RELOAD_SECONDS == 0)) || next_reload=$(at $((RELOAD_SECONDS / 2)))
((FLAP_SECONDS == 0)) || next_flap=$(at $((FLAP_SECONDS / 2)))
((UPGRADE_AT_SECONDS == 0)) || next_upgrade=$(at "$UPGRADE_AT_SECONDS")
last_event=$(at $((DURATION - 5))) # nothing new in the last seconds of the run
nsamples=$((DURATION / SAMPLE_SECONDS))
for ((k = 1; k <= nsamples; k++)); do
    due=$(at $((k * SAMPLE_SECONDS)))
    until past "$due"; do
        check_deadline "sample $k"
        kill -0 "$GEN_PID" 2>/dev/null || die "the generator exited early: $(tail -n 5 "$OUT_DIR/generator.stderr")"
        kill -0 "$GW_PID" 2>/dev/null || die "the gateway (pid $GW_PID) exited: $(tail -n 20 "$TMP/gateway.$GW_N.log")"
        if past "$next_upgrade"; then
            next_upgrade=$NEVER
            upgrade
        elif past "$next_reload"; then
            next_reload=$((next_reload + RELOAD_SECONDS * 1000000))
            past "$last_event" || reload
        elif past "$next_up"; then
            next_up=$NEVER
            start_upstream 3
            event "upstream up" "instance 3 (:$UP3) started again, pid ${UP_PID[3]}"
        elif past "$next_flap"; then
            next_flap=$((next_flap + FLAP_SECONDS * 1000000))
            if ! past "$last_event"; then
                stop_upstream 3
                event "upstream down" "instance 3 (:$UP3) stopped for ${FLAP_DOWN_SECONDS}s"
                now_us
                next_up=$((NOW_US + FLAP_DOWN_SECONDS * 1000000))
            fi
        else
            sleep 0.2
        fi
    done
    sample "$k"
done
[[ -n ${UP_PID[3]} ]] || { start_upstream 3 && event "upstream up" "instance 3 started again (end of run)"; }

# The generator's final report comes once its last requests are answered (or time out).
until=$((SECONDS + 30))
while kill -0 "$GEN_PID" 2>/dev/null && ((SECONDS < until)); do sleep 0.2; done
gen_rc=0
wait "$GEN_PID" || gen_rc=$?
forget "$GEN_PID"
((gen_rc == 0 || gen_rc == 3)) || die "the generator failed (exit $gen_rc): $(tail -n 5 "$OUT_DIR/generator.stderr")"
event end "generator exit $gen_rc"

# --- the report -------------------------------------------------------------------------------
cp "$TMP/mix.json" "$OUT_DIR/mix.json"
warnings=()
for ((i = 1; i <= GW_N; i++)); do
    grep -E '\b(WARN|ERROR)\b' "$TMP/gateway.$i.log" >"$OUT_DIR/gateway.$i.warnings.log" || true
    warnings+=(--warnings "$OUT_DIR/gateway.$i.warnings.log")
done
bench_machine
verdict=0
python3 "$HERE/report.py" --out "$OUT_DIR" --samples "$SAMPLES" --events "$EVENTS" \
    --generator "$OUT_DIR/generator.json" --sample-seconds "$SAMPLE_SECONDS" --warm-minutes "$WARM_MINUTES" \
    --rss-growth-pct "$RSS_GROWTH_PCT" --fd-slack "$FD_SLACK" --thread-slack "$THREAD_SLACK" \
    --ops-failed "$OPS_FAILED" --generator-exit "$gen_rc" "${warnings[@]}" \
    --title "$(date -u '+%Y-%m-%d %H:%M UTC') — soak, $SOAK_MINUTES minutes" \
    --setting "commit $COMMIT; gateway $PORTICO_BIN (${BIN_ORIGIN}), upgraded to $PORTICO_BIN_UPGRADE" \
    --setting "machine: nproc $NPROC, $CPU_MODEL, kernel $(uname -r); nginx $NGINX_VERSION upstreams" \
    --setting "$RATE req/s open loop ($CONNECTIONS connections, benches/open_loop.rs --mix) for $SOAK_MINUTES min; $GATEWAY_THREADS gateway threads; a row every ${SAMPLE_SECONDS}s; warm-up $WARM_MINUTES min" \
    --setting "reload every ${RELOAD_SECONDS}s (two configs alternating: header value, rate limit $LIMIT_A/$LIMIT_B per s for the limited client, pool balancer round_robin/least_request); upstream 3 of 3 stopped every ${FLAP_SECONDS}s for ${FLAP_DOWN_SECONDS}s; graceful upgrade at ${UPGRADE_AT_SECONDS}s" \
    --short "$( ((SOAK_MINUTES < 30 || SAMPLE_SECONDS != 60 || RELOAD_SECONDS != 60)) && echo 1 || echo 0)" ||
    verdict=$?
if ((RECORD == 1)); then
    if [[ -s $OUT_DIR/soak.png ]]; then
        png=soak-$(basename "$OUT_DIR").png
        cp "$OUT_DIR/soak.png" "$LOAD_DIR/$png"
        sed -i "s|(soak.png)|($png)|" "$OUT_DIR/report.md"
    fi
    bench_record "$(<"$OUT_DIR/report.md")"
fi
log "CSV, plot, report and logs in $OUT_DIR"
exit "$verdict"
