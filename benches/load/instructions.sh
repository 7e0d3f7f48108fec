#!/usr/bin/env bash
# User-space instructions per request of portico's load contenders, counted by callgrind: the
# deterministic counterpart of run.sh's requests/s. On a shared machine whose speed drifts by
# ±30 % from minute to minute, req/s cannot show a 2 % change in the hot path; instruction
# counts show it the same way on every run. They leave out the kernel (about half of the
# proxy's CPU time at this load) and anything the CPU does faster than its instruction count
# says: under valgrind, SHA-256 runs in software (~35k instructions for a 600-byte token)
# where the machine uses SHA-NI (~1.5k cycles), so compare portico+jwt with care.
#
#   benches/load/instructions.sh                                   # the four contenders below
#   CONTENDERS="portico portico+log" REQUESTS=2000 benches/load/instructions.sh
#
# Environment (defaults in brackets):
#   CONTENDERS ["portico portico+log portico+nojwt portico+jwt"]  portico contenders of run.sh,
#                          and "pingora" / "pingora+duties" (bare Pingora, benches/bare_pingora.rs):
#                          the controls of "portico", as in run.sh
#   REQUESTS [1000]        measured requests per contender (4 keep-alive connections, in turn)
#   WARMUP_REQUESTS [300]  requests sent before counting starts
#   PORTICO_BIN            this binary instead of `cargo build --release --bin portico`
#   BARE_BIN               this bare Pingora instead of `cargo build --release --bench bare_pingora`
#   KEEP_PROFILES          a directory to copy each contender's callgrind file into
#                          (callgrind.<contender>), for callgrind_annotate
#
# It starts run.sh once (one 1-second round, kept temp dir) for the configs, the upstream
# nginx config and the token, then runs each contender alone under callgrind on loopback.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CONTENDERS=${CONTENDERS:-"portico portico+log portico+nojwt portico+jwt"}
REQUESTS=${REQUESTS:-1000}
WARMUP_REQUESTS=${WARMUP_REQUESTS:-300}

BENCH=instructions.sh
# For die and cargo_bench_bin; this script sets up its processes itself (below).
# shellcheck source=benches/load/lib.sh
source "$HERE/lib.sh"
for c in $CONTENDERS; do
    case $c in pingora | pingora+duties | portico | portico+log | portico+nojwt | portico+jwt | portico+resilience) ;;
    *) die "unknown contender '$c' (pingora, pingora+duties, portico, portico+log, portico+nojwt, portico+jwt, portico+resilience)" ;;
    esac
done
[[ $REQUESTS =~ ^[1-9][0-9]*$ && $WARMUP_REQUESTS =~ ^[0-9]+$ ]] || die "REQUESTS and WARMUP_REQUESTS must be numbers"
if ! command -v valgrind >/dev/null; then
    ((EUID == 0)) || die "needs valgrind"
    apt-get install -y valgrind >/dev/null
fi

if [[ -z ${PORTICO_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --bin portico)
    PORTICO_BIN=$REPO/target/release/portico
fi
PORTICO_BIN=$(realpath "$PORTICO_BIN")
if [[ " $CONTENDERS " == *" pingora "* || " $CONTENDERS " == *" pingora+duties "* ]]; then
    BARE_BIN=${BARE_BIN:-$(cargo_bench_bin bare_pingora)}
    [[ -x $BARE_BIN ]] || die "no bare_pingora executable (BARE_BIN)"
fi

# Configs, the upstream and the token, exactly as the load benchmark makes them (run.sh
# needs at least one portico contender for them).
setup_contenders=$(for c in $CONTENDERS; do [[ $c == pingora* ]] || printf '%s ' "$c"; done)
setup_contenders=${setup_contenders:-portico}
setup_log=$(mktemp)
PORTICO_BIN=$PORTICO_BIN KEEP_TMP=1 RECORD=0 ROUNDS=1 DURATION=1 WARMUP=0 \
    CONTENDERS="$setup_contenders" bash "$HERE/run.sh" >"$setup_log" 2>&1 ||
    { cat "$setup_log" >&2; die "run.sh failed"; }
TMP=$(sed -n 's/^run.sh: temp dir kept: //p' "$setup_log" | tail -n1)
rm -f "$setup_log"
[[ -d $TMP ]] || die "run.sh kept no temp dir"

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

nginx -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;' >"$TMP/upstream.out" 2>&1 &
PIDS+=($!)

# Sends N GETs over 4 keep-alive connections in turn; fails on any answer but 200.
send() { # port n [token]
    python3 - "$@" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
headers = {"Authorization": "Bearer " + sys.argv[3]} if len(sys.argv) > 3 else {}
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
for i in range(n):
    conn = conns[i % 4]
    conn.request("GET", "/", headers=headers)
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        sys.exit(f"request {i}: status {resp.status}")
PY
}

toml_port() { # file section -> the port of the section's `address = "127.0.0.1:PORT"`
    awk -v s="$2" '$0 == s { f = 1; next } f && /^address/ { gsub(/.*:|"/, ""); print; exit }' "$1"
}

printf '| contender | instructions per request | ÷ %s | of which SHA-256 in software | without it, ÷ %s |\n|---|---:|---:|---:|---:|\n' \
    "${CONTENDERS%% *}" "${CONTENDERS%% *}"
base=""
upstream_port=$(awk '/listen 127.0.0.1:/ { sub(/.*127.0.0.1:/, ""); sub(/[ ;].*/, ""); print; exit }' "$TMP/upstream.conf")
for c in $CONTENDERS; do
    name=${c/+/-}
    out=$TMP/callgrind.$name
    token=()
    if [[ $c == portico+jwt || $c == portico+nojwt ]]; then token=("$(<"$TMP/jwt.token")"); fi
    if [[ $c == pingora* ]]; then
        port=$((upstream_port + 1000))
        duties=0
        if [[ $c == pingora+duties ]]; then duties=1; fi
        PORTICO_BENCH_DUTIES=$duties valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
            "$BARE_BIN" "127.0.0.1:$port" "127.0.0.1:$upstream_port" 1 >"$TMP/$name.callgrind.log" 2>&1 &
        ready=(curl -fs -o /dev/null "http://127.0.0.1:$port/")
    else
        config=$TMP/$name.toml
        port=$(toml_port "$config" '[[listeners]]') admin=$(toml_port "$config" '[admin]')
        valgrind --tool=callgrind --callgrind-out-file="$out.%p" \
            "$PORTICO_BIN" serve -c "$config" >"$TMP/$name.callgrind.log" 2>&1 &
        ready=(curl -fs -o /dev/null "http://127.0.0.1:$admin/readyz")
    fi
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 120); do
        "${ready[@]}" && break
        kill -0 "$pid" 2>/dev/null || { cat "$TMP/$name.callgrind.log" >&2; die "$c exited"; }
        sleep 0.5
    done
    send "$port" "$WARMUP_REQUESTS" "${token[@]}"
    callgrind_control -z "$pid" >/dev/null 2>&1
    send "$port" "$REQUESTS" "${token[@]}"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    # The dump after zeroing holds exactly the measured requests.
    total=$(awk '/^(summary|totals):/ { print $2; exit }' "$out.$pid.1")
    if [[ -n ${KEEP_PROFILES:-} ]]; then mkdir -p "$KEEP_PROFILES" && cp "$out.$pid.1" "$KEEP_PROFILES/callgrind.$name"; fi
    sha=$(callgrind_annotate --inclusive=yes "$out.$pid.1" 2>/dev/null |
        awk '!n && /sha2::sha256::compress256/ { gsub(",", "", $1); print $1; n = 1 }')
    per=$((total / REQUESTS)) sha=$((${sha:-0} / REQUESTS))
    base=${base:-$per}
    awk -v c="$c" -v p="$per" -v b="$base" -v s="$sha" \
        'BEGIN { printf "| %s | %d | %.3f× | %d | %.3f× |\n", c, p, p / b, s, (p - s) / b }'
done
