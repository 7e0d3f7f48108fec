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
#                          and portico~TAG variants (portico+nojwt is portico+jwt without its jwt
#                          plugin; portico+forged is portico+jwt sent a different forged token
#                          on every request),
#                          interleaved in the order given. pingora is the bare Pingora proxy
#                          (benches/bare_pingora.rs), pingora~ws the same with work
#                          stealing; portico~TAG is the plain portico contender
#                          with [server] keys from PORTICO_SERVER_TAG and/or the binary
#                          PORTICO_BIN_TAG (e.g. PORTICO_SERVER_nows="work_stealing = false")
#   MEM_CONNS [2000]       idle connections per proxy in MODE=memory
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
QUIET_THRESHOLD=${QUIET_THRESHOLD:-15}
if ((EUID == 0)); then NICE=${NICE:--20}; else NICE=${NICE:-0}; fi
[[ $NICE =~ ^-?[0-9]+$ ]] || { echo "run.sh: NICE must be an integer (got '$NICE')" >&2; exit 1; }
if ((NICE < 0)); then QUIET_WAIT=${QUIET_WAIT:-0}; else QUIET_WAIT=${QUIET_WAIT:-20}; fi
BARE_WORK_STEALING=${BARE_WORK_STEALING:-false}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-18000}
RESULTS=${RESULTS:-$HERE/RESULTS.md}
RECORD=${RECORD:-1}
KEEP_TMP=${KEEP_TMP:-0}

die() { echo "run.sh: $*" >&2; exit 1; }

# With NICE < 0 and autogroup scheduling, rerun this script in a session of its own so that
# its autogroup, whose niceness it lowers later, holds nothing but the benchmark. This outer
# copy only forwards Ctrl-C / TERM (the new session has no terminal) and waits.
if ((NICE < 0)) && [[ -z ${_PORTICO_BENCH_OWN_SESSION:-} ]] &&
    [[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]] && command -v setsid >/dev/null; then
    _PORTICO_BENCH_OWN_SESSION=1 setsid "$BASH" "${BASH_SOURCE[0]}" "$@" </dev/null &
    inner=$!
    trap 'kill -TERM "$inner" 2>/dev/null' INT TERM
    rc=0
    while :; do
        wait "$inner" && rc=0 || rc=$?
        kill -0 "$inner" 2>/dev/null || break # wait returned early for a trapped signal
    done
    exit "$rc"
fi
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- inputs -------------------------------------------------------------------------------
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in ROUNDS DURATION WARMUP CONNECTIONS MEM_CONNS MEM_CYCLES MEM_SETTLE MEM_RELEASE_WAIT \
         MEM_TRICKLE QUIET_THRESHOLD QUIET_WAIT PROXY_CPU LOAD_CPU PORT_BASE; do
    is_uint "${!v}" || die "$v must be a non-negative integer (got '${!v}')"
done
((ROUNDS >= 1)) || die "ROUNDS must be >= 1"
((DURATION >= 1)) || die "DURATION must be >= 1"
((CONNECTIONS >= 1)) || die "CONNECTIONS must be >= 1"
((MEM_CONNS >= 1 && MEM_CYCLES >= 1)) || die "MEM_CONNS and MEM_CYCLES must be >= 1"
case $MODE in load | memory | all) ;; *) die "MODE must be load, memory or all (got '$MODE')" ;; esac
read -r -a CONTENDER_LIST <<<"$CONTENDERS"
((${#CONTENDER_LIST[@]} >= 1)) || die "CONTENDERS is empty"
for c in "${CONTENDER_LIST[@]}"; do
    case $c in nginx | pingora | pingora~ws | portico | portico+log | portico+resilience | portico+nojwt | portico+jwt | portico+forged | haproxy+jwt) ;;
    portico~*)
        tag=${c#portico~}
        [[ $tag =~ ^[A-Za-z0-9_]+$ ]] || die "variant tag '$tag' must be letters, digits and _"
        server_var=PORTICO_SERVER_$tag bin_var=PORTICO_BIN_$tag
        [[ -n ${!server_var:-} || -n ${!bin_var:-} ]] || die "$c needs PORTICO_SERVER_$tag or PORTICO_BIN_$tag"
        ;;
    *) die "unknown contender '$c' (nginx, pingora, pingora~ws, portico, portico+log, portico+resilience, portico+nojwt, portico+jwt, portico+forged, haproxy+jwt, portico~TAG)" ;;
    esac
done
has_contender() { [[ " ${CONTENDER_LIST[*]} " == *" $1 "* ]]; }
WANT_JWT=0
if has_contender portico+jwt || has_contender portico+nojwt || has_contender portico+forged ||
    has_contender haproxy+jwt; then WANT_JWT=1; fi
NPROC=$(nproc)
((PROXY_CPU < NPROC && LOAD_CPU < NPROC)) || die "needs cores $PROXY_CPU and $LOAD_CPU; this machine has $NPROC"
((PROXY_CPU != LOAD_CPU)) || die "PROXY_CPU and LOAD_CPU must differ"

# --- tools --------------------------------------------------------------------------------
NGINX_BIN=${NGINX_BIN:-$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)}
if [[ -z $NGINX_BIN ]] || ! command -v wrk >/dev/null; then
    ((EUID == 0)) || die "nginx or wrk is missing; install them: sudo apt-get install -y nginx-light wrk"
    log "installing nginx and wrk"
    apt-get update
    # nginx-light is gone from newer Debian releases; plain nginx serves the same purpose.
    apt-get install -y nginx-light wrk || apt-get install -y nginx wrk
    NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
fi
for tool in "$NGINX_BIN" wrk taskset python3 curl timeout; do
    command -v "$tool" >/dev/null || die "missing tool: $tool"
done
# The protected path: openssl makes the RSA key pair and signs the token; HAProxy is the
# contender validating it natively (Debian's haproxy is 2.6+, which has jwt_verify).
HAPROXY_BIN=${HAPROXY_BIN:-$(command -v haproxy || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; } || true)}
need_pkgs=()
if ((WANT_JWT)) && ! command -v openssl >/dev/null; then need_pkgs+=(openssl); fi
if has_contender haproxy+jwt && [[ -z $HAPROXY_BIN ]]; then need_pkgs+=(haproxy); fi
if ((${#need_pkgs[@]} > 0)); then
    ((EUID == 0)) || die "missing ${need_pkgs[*]}; install: sudo apt-get install -y ${need_pkgs[*]}"
    log "installing ${need_pkgs[*]}"
    apt-get update
    apt-get install -y "${need_pkgs[@]}"
    HAPROXY_BIN=$(command -v haproxy || echo /usr/sbin/haproxy)
fi
if has_contender haproxy+jwt; then
    [[ -x $HAPROXY_BIN ]] || die "missing tool: haproxy"
    HAPROXY_VERSION=$("$HAPROXY_BIN" -v 2>&1 | awk 'NR == 1 { print $3 }')
    # jwt_verify and jwt_*_query appeared in 2.5; the budget names 2.6.
    awk -v v="$HAPROXY_VERSION" 'BEGIN { split(v, a, "."); exit !(a[1] > 2 || (a[1] == 2 && a[2] >= 6)) }' ||
        die "haproxy $HAPROXY_VERSION is too old: haproxy+jwt needs 2.6+ (jwt_verify)"
fi

# --- portico binary -----------------------------------------------------------------------
if [[ -n ${PORTICO_BIN:-} ]]; then
    [[ -x $PORTICO_BIN ]] || die "PORTICO_BIN=$PORTICO_BIN is not an executable"
    BIN_ORIGIN="given via PORTICO_BIN"
else
    if [[ " ${CONTENDER_LIST[*]} " == *" portico"* ]]; then
        log "building portico (cargo build --release)"
        (cd "$REPO" && cargo build --release --bin portico) || die "cargo build --release failed"
    fi
    PORTICO_BIN=${CARGO_TARGET_DIR:-$REPO/target}/release/portico
    BIN_ORIGIN="cargo build --release of the working tree"
fi
# The bare Pingora reference: same Pingora, allocator and release profile, none of portico.
if has_contender pingora || has_contender pingora~ws; then
    log "building the bare Pingora reference (cargo build --release --bench bare_pingora)"
    BARE_BIN=$(cd "$REPO" && cargo build --release --bench bare_pingora --message-format=json |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "bare_pingora" and m.get("executable"):
        print(m["executable"])') || die "cannot build benches/bare_pingora.rs"
    [[ -x $BARE_BIN ]] || die "no bare_pingora executable"
fi

# Everything started from here on (proxies, upstream, wrk, the memory client) inherits it.
# With autogroup scheduling (the default on Linux desktops and these VMs) a nice value only
# counts among the processes of one session, so the script runs in a session of its own
# (see the top) and lowers its session's autogroup niceness as well. Both end with the run.
if ((NICE != 0)); then
    renice -n "$NICE" -p $$ >/dev/null || die "cannot renice to $NICE (set NICE=0)"
    if [[ -n ${_PORTICO_BENCH_OWN_SESSION:-} && -w /proc/$$/autogroup ]]; then
        echo "$NICE" >/proc/$$/autogroup || die "cannot set the autogroup niceness (set NICE=0)"
    fi
fi

# --- time budget --------------------------------------------------------------------------
ncont=${#CONTENDER_LIST[@]}
estimate=15
quiet_slack=0
if [[ $MODE != memory ]]; then
    estimate=$((estimate + ROUNDS * ncont * (WARMUP + DURATION + 4)))
    quiet_slack=$((ROUNDS * ncont * QUIET_WAIT))
fi
if [[ $MODE != load ]]; then
    estimate=$((estimate + ncont * (WARMUP + 3 + MEM_CYCLES * (2 * MEM_SETTLE + MEM_RELEASE_WAIT + 5 + MEM_CONNS / 500))))
fi
MAX_SECONDS=${MAX_SECONDS:-$((estimate + quiet_slack + 180))}
is_uint "$MAX_SECONDS" || die "MAX_SECONDS must be a non-negative integer"
DEADLINE=$((SECONDS + MAX_SECONDS))
check_deadline() {
    ((SECONDS <= DEADLINE)) || die "over the time budget (MAX_SECONDS=$MAX_SECONDS) before: $1"
}
log "mode $MODE, contenders: ${CONTENDER_LIST[*]}; expected ~${estimate}s, capped at ${MAX_SECONDS}s"

# --- processes and cleanup ----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/portico-load.XXXXXX")
chmod 755 "$TMP" # nginx workers drop to an unprivileged user and must reach their temp dirs
STARTED=()       # "pid:signal" of everything this script started, stopped in reverse

cleanup() {
    local rc=$? entry pid sig i
    trap - EXIT INT TERM
    set +e
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        entry=${STARTED[i]}
        pid=${entry%%:*} sig=${entry#*:}
        kill -0 "$pid" 2>/dev/null && kill -"$sig" "$pid" 2>/dev/null
    done
    local until=$((SECONDS + 10))
    for entry in "${STARTED[@]}"; do
        pid=${entry%%:*}
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < until)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: pid $pid did not stop; killing it" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if ((rc == 0 && KEEP_TMP == 0)); then
        rm -rf "$TMP"
    else
        # The access logs of portico+log and portico+jwt can be large; the rest is small and useful.
        rm -f "$TMP"/*.access.log
        echo "run.sh: temp dir kept: $TMP" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'echo "run.sh: terminated" >&2; exit 143' TERM

# The proxies and the memory client may need more descriptors than the default 1024.
if ((EUID == 0)); then ulimit -Hn 262144 2>/dev/null || true; fi # MEM_CONNS=20000 needs 20k fds in the proxy and the client
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true

# Free ports on 127.0.0.1, scanning up from PORT_BASE; bind-tested, not guessed.
free_ports() { # count
    python3 - "$PORT_BASE" "$1" <<'EOF'
import socket, sys
port, want, found = int(sys.argv[1]), int(sys.argv[2]), []
while len(found) < want and port < 65535:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx and Pingora do
    try:
        s.bind(("127.0.0.1", port))
        found.append(port)
    except OSError:
        pass
    finally:
        s.close()
    port += 1
if len(found) < want:
    sys.exit("not enough free ports")
print(" ".join(map(str, found)))
EOF
}

render() { # template output key=value...
    local text kv
    text=$(<"$1")
    for kv in "${@:3}"; do
        text=${text//"@${kv%%=*}@"/"${kv#*=}"}
    done
    printf '%s\n' "$text" >"$2"
    ! grep -q '@[A-Z_]*@' "$2" || die "unfilled placeholder in $2"
}

wait_http() { # url pid what seconds
    local until=$((SECONDS + $4))
    while ! curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null; do
        kill -0 "$2" 2>/dev/null || { tail -n 30 "$TMP"/*.log >&2 || true; die "$3 exited while starting"; }
        ((SECONDS < until)) || die "$3 not ready at $1 after $4 s"
        sleep 0.1
    done
}

# --- configs and processes ----------------------------------------------------------------
nports=$((16 + 2 * ${#CONTENDER_LIST[@]}))
ports=$(free_ports "$nports") || die "cannot find $nports free ports from $PORT_BASE"
read -r UPSTREAM_PORT NGINX_PORT PORTICO_PORT PORTICO_ADMIN LOG_PORT LOG_ADMIN JWT_PORT JWT_ADMIN \
    HAPROXY_PORT RES_PORT RES_ADMIN BARE_PORT NOJWT_PORT NOJWT_ADMIN FORGED_PORT FORGED_ADMIN \
    VARIANT_PORTS <<<"$ports"
read -r -a VARIANT_PORTS <<<"$VARIANT_PORTS"
declare -A PORT PID MEASURE_PIDS ADMIN
PORT[pingora]=$BARE_PORT
i=0
for c in "${CONTENDER_LIST[@]}"; do
    [[ $c == portico~* || $c == pingora~ws ]] || continue
    PORT[$c]=${VARIANT_PORTS[i]} ADMIN[$c]=${VARIANT_PORTS[i + 1]}
    i=$((i + 2))
done
PORT[nginx]=$NGINX_PORT
PORT[portico]=$PORTICO_PORT
PORT[portico+log]=$LOG_PORT
PORT[portico+jwt]=$JWT_PORT
PORT[portico+resilience]=$RES_PORT
PORT[portico+nojwt]=$NOJWT_PORT
PORT[portico+forged]=$FORGED_PORT
PORT[haproxy+jwt]=$HAPROXY_PORT
ADMIN[portico]=$PORTICO_ADMIN
ADMIN[portico+log]=$LOG_ADMIN
ADMIN[portico+jwt]=$JWT_ADMIN
ADMIN[portico+resilience]=$RES_ADMIN
ADMIN[portico+nojwt]=$NOJWT_ADMIN
ADMIN[portico+forged]=$FORGED_ADMIN
# Contenders on the protected path: wrk and the checks send the token to these. portico+nojwt
# gets the same request as portico+jwt, so the two differ only in the token being checked.
# portico+forged is portico+jwt again, checked with the token like it, but measured with a
# different forged token on every request (forged.lua).
is_protected() { [[ $1 == *+jwt || $1 == portico+nojwt || $1 == portico+forged ]]; }
checks_token() { [[ $1 == *+jwt || $1 == portico+forged ]]; }

# --- the token ----------------------------------------------------------------------------
# A fresh RSA-2048 key pair per run and one long-lived RS256 access token (RFC 9068 profile:
# typ at+jwt) signed with it. portico+jwt reads the public key from a local PEM file, and
# haproxy+jwt loads the same file into jwt_verify's key cache at start.
JWT_ISSUER=https://auth.portico-bench.test
JWT_AUDIENCE=portico-bench
JWT_PRIVKEY=$TMP/jwt.key.pem
JWT_PUBKEY=$TMP/jwt.pub.pem
TOKEN=""
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
sign_token() { # payload-json -> compact JWS, RS256
    local h p s
    h=$(printf '%s' '{"alg":"RS256","typ":"at+jwt"}' | b64url)
    p=$(printf '%s' "$1" | b64url)
    s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign "$JWT_PRIVKEY" -binary | b64url)
    [[ -n $s ]] || die "openssl could not sign the token"
    printf '%s.%s.%s' "$h" "$p" "$s"
}
if ((WANT_JWT)); then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$JWT_PRIVKEY" 2>/dev/null ||
        die "openssl could not generate an RSA key"
    openssl pkey -in "$JWT_PRIVKEY" -pubout -out "$JWT_PUBKEY" || die "openssl could not write the public key"
    now=$(date +%s)
    TOKEN=$(sign_token "$(printf '{"iss":"%s","aud":"%s","sub":"service-a","client_id":"service-a","scope":"bench:read bench:write","iat":%d,"exp":%d}' \
        "$JWT_ISSUER" "$JWT_AUDIENCE" "$now" $((now + 10 * 365 * 86400)))")
    printf '%s\n' "$TOKEN" >"$TMP/jwt.token"
    # The same token signed by another key: both protected contenders must refuse it too.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/jwt.other.key.pem" 2>/dev/null
    FORGED=$(JWT_PRIVKEY=$TMP/jwt.other.key.pem sign_token "$(printf '{"iss":"%s","aud":"%s","sub":"service-a","iat":%d,"exp":%d}' \
        "$JWT_ISSUER" "$JWT_AUDIENCE" "$now" $((now + 3600)))")
    log "RS256 token: ${#TOKEN} bytes, iss $JWT_ISSUER, aud $JWT_AUDIENCE (key pair and token in $TMP)"
    # What forged.lua builds portico+forged's tokens from: the valid token's header and
    # claims, and the length of an RSA-2048 signature.
    export FORGED_SIGNED=${TOKEN%.*} FORGED_SIG_BYTES=256
fi

start_nginx() { # name conf cpu -> sets $started_pid
    mkdir -p "$TMP/$1.tmp"
    taskset -c "$3" "$NGINX_BIN" -p "$TMP" -c "$2" -g 'daemon off; master_process on;' \
        >"$TMP/$1.log" 2>&1 &
    started_pid=$!
    STARTED+=("$started_pid:TERM")
}

check_deadline "starting the upstream"
render "$HERE/upstream.nginx.conf.tmpl" "$TMP/upstream.conf" DIR="$TMP" PORT="$UPSTREAM_PORT"
mkdir -p "$TMP/upstream.tmp" "$TMP/nginx-proxy.tmp"
"$NGINX_BIN" -t -q -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;' || die "upstream nginx config invalid"
start_nginx upstream "$TMP/upstream.conf" "$LOAD_CPU"
UPSTREAM_PID=$started_pid
wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "$UPSTREAM_PID" "upstream nginx" 10
mapfile -t UPSTREAM_WORKERS < <(pgrep -P "$UPSTREAM_PID")
((${#UPSTREAM_WORKERS[@]} > 0)) || die "upstream nginx has no worker process"
log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (core $LOAD_CPU)"

start_portico() { # name stem port admin access_log plugins [route-extra [cluster-extra [server-extra [binary]]]]
    local bin=${10:-$PORTICO_BIN}
    render "$HERE/portico.toml.tmpl" "$TMP/$2.toml" DIR="$TMP" NAME="$2" PORT="$3" \
        ADMIN_PORT="$4" UPSTREAM_PORT="$UPSTREAM_PORT" ACCESS_LOG="$5" PLUGINS="$6" \
        ROUTE="${7:-}" CLUSTER="${8:-}" SERVER="${9:-}" LIMITS="${PORTICO_LIMITS:-}"
    "$bin" check -c "$TMP/$2.toml" >/dev/null || die "portico rejects $TMP/$2.toml"
    taskset -c "$PROXY_CPU" "$bin" serve -c "$TMP/$2.toml" >"$TMP/$2.log" 2>&1 &
    PID[$1]=$!
    STARTED+=("${PID[$1]}:INT") # SIGINT: Pingora's fast shutdown
    MEASURE_PIDS[$1]=${PID[$1]}
    wait_http "http://127.0.0.1:$4/readyz" "${PID[$1]}" "$1" 30
    log "$1 on 127.0.0.1:$3 (admin $4, core $PROXY_CPU), pid ${PID[$1]}"
}

for c in "${CONTENDER_LIST[@]}"; do
    check_deadline "starting $c"
    case $c in
    nginx)
        render "$HERE/proxy.nginx.conf.tmpl" "$TMP/nginx-proxy.conf" DIR="$TMP" \
            PORT="$NGINX_PORT" UPSTREAM_PORT="$UPSTREAM_PORT"
        "$NGINX_BIN" -t -q -p "$TMP" -c "$TMP/nginx-proxy.conf" -g 'daemon off;' || die "proxy nginx config invalid"
        start_nginx nginx-proxy "$TMP/nginx-proxy.conf" "$PROXY_CPU"
        PID[nginx]=$started_pid
        wait_http "http://127.0.0.1:$NGINX_PORT/" "${PID[nginx]}" "nginx proxy" 10
        # The worker does the proxying; the master only supervises.
        MEASURE_PIDS[nginx]=$(pgrep -P "${PID[nginx]}" | tr '\n' ' ')
        [[ -n ${MEASURE_PIDS[nginx]// /} ]] || die "nginx proxy has no worker process"
        log "nginx proxy on 127.0.0.1:$NGINX_PORT (core $PROXY_CPU), worker ${MEASURE_PIDS[nginx]}"
        ;;
    pingora | pingora~ws)
        # One thread, and work stealing as portico's [server] default (BARE_WORK_STEALING),
        # or on for pingora~ws.
        ws=$BARE_WORK_STEALING
        if [[ $c == pingora~ws ]]; then ws=true; fi
        taskset -c "$PROXY_CPU" "$BARE_BIN" "127.0.0.1:${PORT[$c]}" "127.0.0.1:$UPSTREAM_PORT" \
            1 "$ws" >"$TMP/$c.log" 2>&1 &
        PID[$c]=$!
        STARTED+=("${PID[$c]}:INT")
        MEASURE_PIDS[$c]=${PID[$c]}
        wait_http "http://127.0.0.1:${PORT[$c]}/" "${PID[$c]}" "$c" 10
        log "$c (bare Pingora, work stealing $ws) on 127.0.0.1:${PORT[$c]} (core $PROXY_CPU), pid ${PID[$c]}"
        ;;
    portico)
        start_portico portico portico "$PORTICO_PORT" "$PORTICO_ADMIN" off ""
        ;;
    portico~*)
        tag=${c#portico~}
        server_var=PORTICO_SERVER_$tag bin_var=PORTICO_BIN_$tag
        start_portico "$c" "portico-$tag" "${PORT[$c]}" "${ADMIN[$c]}" off "" "" "" \
            "${!server_var:-}" "${!bin_var:-$PORTICO_BIN}"
        log "$c: [server] ${!server_var:-(defaults)}, binary ${!bin_var:-$PORTICO_BIN}"
        ;;
    portico+log)
        start_portico portico+log portico-log "$LOG_PORT" "$LOG_ADMIN" \
            "$TMP/portico-log.access.log" $'[[plugins]]\nname = "request-id"'
        ;;
    portico+resilience)
        # The plain path plus the resilience machinery on the happy path (issue 5): a retry
        # policy and deadline on the route, a circuit breaker on the cluster and on each
        # endpoint, and a bulkhead roomy enough never to reject wrk's 50 connections.
        start_portico portico+resilience portico-resilience "$RES_PORT" "$RES_ADMIN" off "" \
            'timeout = "10s"
retry = { attempts = 3, per_try_timeout = "2s" }' \
            'breaker = {}
endpoint_breaker = { consecutive_failures = 5 }
bulkhead = { max_concurrent = 256, max_queue = 64, queue_timeout = "100ms" }'
        ;;
    portico+jwt | portico+nojwt | portico+forged)
        # The protected path of DESIGN's budget: a valid RS256 token checked by the jwt plugin
        # (local PEM key; iss, aud, exp, sub), request ids, the access log to a file, a retry
        # policy on the route and a bulkhead on the cluster (roomy enough for wrk's 50
        # connections: it must never reject here). Metrics are always on. portico+nojwt is the
        # same route without the jwt plugin: what checking the token costs is the difference.
        # portico+forged is portico+jwt exactly, in a process of its own.
        route='retry = { attempts = 3, per_try_timeout = "2s" }'
        if [[ $c != portico+nojwt ]]; then
            route+="

[[routes.plugins]]
name = \"jwt\"
realm = \"bench\"

[[routes.plugins.issuers]]
issuer = \"$JWT_ISSUER\"
audiences = [\"$JWT_AUDIENCE\"]
algorithms = [\"RS256\"]
keys = [\"$JWT_PUBKEY\"]"
        fi
        start_portico "$c" "${c/+/-}" "${PORT[$c]}" "${ADMIN[$c]}" \
            "$TMP/${c/+/-}.access.log" $'[[plugins]]\nname = "request-id"' "$route" \
            'bulkhead = { max_concurrent = 256, max_queue = 64, queue_timeout = "100ms" }'
        ;;
    haproxy+jwt)
        render "$HERE/haproxy-jwt.cfg.tmpl" "$TMP/haproxy-jwt.cfg" DIR="$TMP" PORT="$HAPROXY_PORT" \
            UPSTREAM_PORT="$UPSTREAM_PORT" PUBKEY="$JWT_PUBKEY" ISSUER="$JWT_ISSUER" AUDIENCE="$JWT_AUDIENCE"
        "$HAPROXY_BIN" -c -q -f "$TMP/haproxy-jwt.cfg" || die "haproxy config invalid ($TMP/haproxy-jwt.cfg)"
        # -db: foreground, one process (no master), so that process is the one measured.
        taskset -c "$PROXY_CPU" "$HAPROXY_BIN" -db -f "$TMP/haproxy-jwt.cfg" >"$TMP/haproxy-jwt.log" 2>&1 &
        PID[haproxy+jwt]=$!
        STARTED+=("${PID[haproxy+jwt]}:TERM")
        MEASURE_PIDS[haproxy+jwt]=${PID[haproxy+jwt]}
        # Not ready until it answers (401 without a token counts as up).
        ready_by=$((SECONDS + 10))
        until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$HAPROXY_PORT/" 2>/dev/null) =~ ^[1-5] ]]; do
            kill -0 "${PID[haproxy+jwt]}" 2>/dev/null || { cat "$TMP/haproxy-jwt.log" >&2; die "haproxy exited while starting"; }
            ((SECONDS < ready_by)) || die "haproxy not ready on 127.0.0.1:$HAPROXY_PORT after 10 s"
            sleep 0.1
        done
        log "haproxy+jwt on 127.0.0.1:$HAPROXY_PORT (core $PROXY_CPU), pid ${PID[haproxy+jwt]}"
        ;;
    esac
done

# Every contender must really proxy to the upstream before anything is measured.
EXPECTED_BODY=$(curl -fsS "http://127.0.0.1:$UPSTREAM_PORT/")
http_status() { # url [curl args...] -> status code
    curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "${@:2}" "$1" || true
}
for c in "${CONTENDER_LIST[@]}"; do
    auth=()
    if is_protected "$c"; then auth=(-H "Authorization: Bearer $TOKEN"); fi
    curl -sS -D "$TMP/$c.headers" -o "$TMP/$c.body" "${auth[@]}" "http://127.0.0.1:${PORT[$c]}/bench/check?x=1" >/dev/null
    status=$(head -n1 "$TMP/$c.headers" | tr -d '\r')
    [[ $status == *" 200"* ]] || die "$c answered '$status' instead of 200${auth:+ (with the token)}"
    [[ $(<"$TMP/$c.body") == "$EXPECTED_BODY" ]] || die "$c returned a body that is not the upstream's"
    if checks_token "$c"; then
        # ... and must refuse a request without the token, and one signed by another key.
        url="http://127.0.0.1:${PORT[$c]}/bench/check?x=1"
        s_none=$(http_status "$url")
        s_forged=$(http_status "$url" -H "Authorization: Bearer $FORGED")
        [[ $s_none == 401 ]] || die "$c answered $s_none instead of 401 without a token"
        [[ $s_forged == 401 ]] || die "$c answered $s_forged instead of 401 to a token signed by another key"
        if [[ $c == portico+forged ]]; then
            # ... and a token as forged.lua makes them: the valid header and claims, random
            # signature bytes below the modulus.
            s_random=$(http_status "$url" -H "Authorization: Bearer $FORGED_SIGNED.$(
                { printf '\x2a'; head -c 255 /dev/urandom; } | b64url)")
            [[ $s_random == 401 ]] || die "$c answered $s_random instead of 401 to a random signature"
        fi
        log "$c: 200 with the token, 401 without it, 401 with a forged one"
    fi
done

# --- measuring ----------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { # pids... -> utime+stime summed (whole thread groups)
    local p total=0 t
    for p in "$@"; do
        t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
        total=$((total + t))
    done
    echo "$total"
}
# Busy % of the whole machine (100 = one core) over a short sleep, while nothing of ours
# runs: CPU taken by other processes, which would steal from the contender being measured.
busy_sample() { # seconds
    local a b
    a=$(awk '/^cpu[0-9]/ { for (i = 2; i <= 9; i++) t += $i; d += $5 + $6 } END { print t, d }' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu[0-9]/ { for (i = 2; i <= 9; i++) t += $i; d += $5 + $6 } END { print t, d }' /proc/stat)
    awk -v a="$a" -v b="$b" -v n="$NPROC" 'BEGIN { split(a, x, " "); split(b, y, " ");
        dt = y[1] - x[1]; printf "%.0f", (dt > 0 ? (1 - (y[2] - x[2]) / dt) * 100 * n : 0) }'
}
# Waits up to QUIET_WAIT seconds for other processes to leave the CPUs alone; prints the
# last sample, which goes into the results either way.
wait_quiet() { # what
    local until=$((SECONDS + QUIET_WAIT)) bg waited=0
    bg=$(busy_sample 1)
    while ((bg > QUIET_THRESHOLD && SECONDS < until)); do
        ((waited == 1)) || log "other processes use ${bg}% CPU; waiting up to ${QUIET_WAIT}s before $1"
        waited=1
        bg=$(busy_sample 1)
    done
    echo "$bg"
}
# Nanoseconds the threads of these processes spent runnable but waiting for a CPU.
runqueue_wait_ns() { # pids...
    local p
    for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{ s += $2 } END { printf "%.0f", s }'
}

run_wrk() { # port seconds outfile [wrk args...]
    timeout -s INT $(($2 + 30)) taskset -c "$LOAD_CPU" \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2"s --latency "${@:4}" "http://127.0.0.1:$1/" >"$3" 2>&1 &
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

metric() { # admin_port name [label-filter] -> value summed over the label sets (holding the filter)
    local body
    body=$(curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null) || { echo n/a; return 0; }
    printf '%s\n' "$body" |
        awk -v m="$2" -v l="${3:-}" '($1 == m || index($1, m "{") == 1) && index($1, l) { s += $NF; f = 1 }
            END { print f ? s : "n/a" }'
}

RUNS=$TMP/runs.tsv
: >"$RUNS"
: >"$TMP/forged.tsv" # portico+forged: round, 401s, other answers
declare -A ACCESS_LOG=([portico+log]=$TMP/portico-log.access.log [portico+jwt]=$TMP/portico-jwt.access.log
    [portico+nojwt]=$TMP/portico-nojwt.access.log [portico+forged]=$TMP/portico-forged.access.log)
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
    local c=$1 r=$2 port=${PORT[$1]} out="$TMP/wrk.$1.$2.txt"
    # shellcheck disable=SC2086
    local mp=(${MEASURE_PIDS[$c]}) wa
    mapfile -t wa < <(wrk_args "$c")
    check_deadline "$c round $r"
    local bg
    bg=$(wait_quiet "$c round $r")
    if ((WARMUP > 0)); then run_wrk "$port" "$WARMUP" "$TMP/wrk.$c.$r.warmup.txt" "${wa[@]}"; fi
    if [[ -n ${ACCESS_LOG[$c]:-} ]]; then : >"${ACCESS_LOG[$c]}"; fi
    local t0 c0 u0 w0 t1 c1 u1 w1
    t0=$(date +%s.%N) c0=$(proc_ticks "${mp[@]}") u0=$(proc_ticks "${UPSTREAM_WORKERS[@]}")
    w0=$(runqueue_wait_ns "${mp[@]}")
    times >"$TMP/times.before" # CPU of waited-for children: here, wrk's (via timeout)
    run_wrk "$port" "$DURATION" "$out" "${wa[@]}"
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

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
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
        mapfile -t wa < <(wrk_args "$c")
        # Baseline after some traffic, so first-use buffers are not charged to connections.
        if [[ $MODE == memory && $WARMUP -gt 0 ]]; then run_wrk "${PORT[$c]}" "$WARMUP" "$TMP/wrk.$c.mem-warmup.txt" "${wa[@]}"; fi
        log "memory: $MEM_CONNS idle keep-alive connections to $c, $MEM_CYCLES cycle(s)"
        local budget=$((MEM_CYCLES * (2 * MEM_SETTLE + MEM_RELEASE_WAIT + 90) + 10))
        timeout -s TERM "$budget" python3 "$HERE/idle_conns.py" --port "${PORT[$c]}" "${args[@]}" \
            -n "$MEM_CONNS" --cycles "$MEM_CYCLES" --settle "$MEM_SETTLE" \
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
for c in portico portico+log portico+nojwt portico+jwt portico+forged; do
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
for f in "$TMP"/upstream.error.log "$TMP"/nginx-proxy.error.log "$TMP"/haproxy-jwt.log; do
    if [[ -s $f ]]; then
        PORTICO_LOG_NOTES+="- $(basename "$f"): $(wc -l <"$f") lines, e.g. $(tail -n1 "$f" | cut -c1-200)"$'\n'
    fi
done

# --- report -------------------------------------------------------------------------------
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no -- src plugins Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    COMMIT+=" (src/plugins modified in the working tree)"
fi
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
NGINX_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///')
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
        printf -- '- memory: %s idle keep-alive connections per proxy (%s), %s cycle(s); RSS read %ss after opening, %ss after closing and again %ss later (with %s req/s of trickle traffic in between)\n\n' \
            "$MEM_CONNS" "$what" "$MEM_CYCLES" "$MEM_SETTLE" "$MEM_SETTLE" "$MEM_RELEASE_WAIT" "$MEM_TRICKLE"
        printf '%s\n\n' "$MEM_TABLE"
    fi
    if [[ -n $LOAD_NOTES$PORTICO_LOG_NOTES ]]; then
        printf 'Notes:\n\n%s%s\n' "$LOAD_NOTES" "$PORTICO_LOG_NOTES"
    fi
)
echo
printf '%s\n' "$REPORT"
if ((RECORD == 1)); then
    if [[ ! -s $RESULTS ]]; then
        printf '# Load benchmark results\n\nAppended by `benches/load/run.sh`; read `benches/load/README.md` first. Compare rows of one run (ratios), not numbers across runs or machines.\n\n' >"$RESULTS"
    fi
    printf '%s\n\n' "$REPORT" >>"$RESULTS"
    log "appended to $RESULTS"
fi
