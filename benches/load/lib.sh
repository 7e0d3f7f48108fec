# shellcheck shell=bash
# The setup that run.sh (throughput, memory) and latency.sh (latency at a fixed rate) share,
# so that both measure the same contenders in the same process layout: the upstream nginx,
# the contenders' configs and start-up checks, the bench token, free ports, the cleanup trap,
# priority, and the samples of other processes' CPU use. Sourced, never run.
#
# The sourcing script sets HERE (this directory), REPO (the repository root), BENCH (its own
# name, the prefix of its messages) and CONTENDERS' default first, then calls, in order:
#   bench_own_session "$@"      (first thing: may re-run the script in a session of its own)
#   bench_check_uints VAR...    (the script's own integer variables), bench_check_contenders
#   bench_tools [wrk]           bench_portico_bin; bench_bare_bin; bench_renice
#   bench_deadline SECONDS      bench_setup_tmp PREFIX
#   bench_ports; bench_mint_token; bench_start_upstream; bench_start_contenders; bench_verify_contenders
# and then measures with wait_quiet, proc_ticks, runqueue_wait_ns, median, metric.
# Every variable read here is listed at the top of run.sh.

# --- settings both scripts read -------------------------------------------------------------
QUIET_THRESHOLD=${QUIET_THRESHOLD:-15}
if ((EUID == 0)); then NICE=${NICE:--20}; else NICE=${NICE:-0}; fi
[[ $NICE =~ ^-?[0-9]+$ ]] || { echo "$BENCH: NICE must be an integer (got '$NICE')" >&2; exit 1; }
if ((NICE < 0)); then QUIET_WAIT=${QUIET_WAIT:-0}; else QUIET_WAIT=${QUIET_WAIT:-20}; fi
BARE_WORK_STEALING=${BARE_WORK_STEALING:-false}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-18000}
RESULTS=${RESULTS:-$HERE/RESULTS.md}
RECORD=${RECORD:-1}
KEEP_TMP=${KEEP_TMP:-0}

die() { echo "$BENCH: $*" >&2; exit 1; }

# With NICE < 0 and autogroup scheduling, rerun the script in a session of its own so that
# its autogroup, whose niceness it lowers later, holds nothing but the benchmark. This outer
# copy only forwards Ctrl-C / TERM (the new session has no terminal) and waits.
bench_own_session() { # "$@" of the script
    if ((NICE < 0)) && [[ -z ${_PORTICO_BENCH_OWN_SESSION:-} ]] &&
        [[ $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null) == 1 ]] && command -v setsid >/dev/null; then
        # The bottom of the call stack is the script that sourced this file.
        _PORTICO_BENCH_OWN_SESSION=1 setsid "$BASH" "${BASH_SOURCE[-1]}" "$@" </dev/null &
        _bench_inner=$!
        trap 'kill -TERM "$_bench_inner" 2>/dev/null' INT TERM
        local rc=0
        while :; do
            wait "$_bench_inner" && rc=0 || rc=$?
            kill -0 "$_bench_inner" 2>/dev/null || break # wait returned early for a trapped signal
        done
        exit "$rc"
    fi
}
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# --- inputs -------------------------------------------------------------------------------
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
has_contender() { [[ " ${CONTENDER_LIST[*]} " == *" $1 "* ]]; }
# Contenders on the protected path: the load generator and the checks send the token to
# these. portico+nojwt gets the same request as portico+jwt, so the two differ only in the
# token being checked. portico+forged is portico+jwt again, checked with the token like it,
# but measured (run.sh) with a different forged token on every request (forged.lua).
is_protected() { [[ $1 == *+jwt || $1 == portico+nojwt || $1 == portico+forged ]]; }
checks_token() { [[ $1 == *+jwt || $1 == portico+forged ]]; }
# Contenders whose listener speaks TLS (a self-signed certificate made for the run).
is_tls() { [[ $1 == *+tls ]]; }
# Where a contender answers: its scheme, address and port, without the path.
contender_url() { # contender
    local scheme=http
    if is_tls "$1"; then scheme=https; fi
    printf '%s://127.0.0.1:%s' "$scheme" "${PORT[$1]}"
}

bench_check_uints() { # names of the script's own non-negative integer variables
    local v
    for v in "$@" QUIET_THRESHOLD QUIET_WAIT PROXY_CPU LOAD_CPU PORT_BASE; do
        is_uint "${!v}" || die "$v must be a non-negative integer (got '${!v}')"
    done
}

bench_check_contenders() {
    local c tag server_var bin_var
    read -r -a CONTENDER_LIST <<<"$CONTENDERS"
    ((${#CONTENDER_LIST[@]} >= 1)) || die "CONTENDERS is empty"
    for c in "${CONTENDER_LIST[@]}"; do
        case $c in nginx | nginx+tls | pingora | pingora+tls | pingora~ws | pingora+duties | portico | portico+tls | portico+log | portico+resilience | portico+nojwt | portico+jwt | portico+forged | haproxy+jwt) ;;
        portico~*)
            tag=${c#portico~}
            [[ $tag =~ ^[A-Za-z0-9_]+$ ]] || die "variant tag '$tag' must be letters, digits and _"
            server_var=PORTICO_SERVER_$tag bin_var=PORTICO_BIN_$tag
            [[ -n ${!server_var:-} || -n ${!bin_var:-} ]] || die "$c needs PORTICO_SERVER_$tag or PORTICO_BIN_$tag"
            ;;
        *) die "unknown contender '$c' (nginx, nginx+tls, pingora, pingora+tls, pingora~ws, pingora+duties, portico, portico+tls, portico+log, portico+resilience, portico+nojwt, portico+jwt, portico+forged, haproxy+jwt, portico~TAG)" ;;
        esac
    done
    WANT_JWT=0
    if has_contender portico+jwt || has_contender portico+nojwt || has_contender portico+forged ||
        has_contender haproxy+jwt; then WANT_JWT=1; fi
    WANT_TLS=0
    for c in "${CONTENDER_LIST[@]}"; do if is_tls "$c"; then WANT_TLS=1; fi; done
    NPROC=$(nproc)
    ((PROXY_CPU < NPROC && LOAD_CPU < NPROC)) || die "needs cores $PROXY_CPU and $LOAD_CPU; this machine has $NPROC"
    ((PROXY_CPU != LOAD_CPU)) || die "PROXY_CPU and LOAD_CPU must differ"
}

# --- tools --------------------------------------------------------------------------------
bench_tools() { # [wrk]: also the closed-loop load generator
    local want_wrk=0 tool
    [[ ${1:-} == wrk ]] && want_wrk=1
    NGINX_BIN=${NGINX_BIN:-$(command -v nginx || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || true)}
    if [[ -z $NGINX_BIN ]] || { ((want_wrk)) && ! command -v wrk >/dev/null; }; then
        if ((want_wrk)); then
            ((EUID == 0)) || die "nginx or wrk is missing; install them: sudo apt-get install -y nginx-light wrk"
            log "installing nginx and wrk"
            apt-get update
            # nginx-light is gone from newer Debian releases; plain nginx serves the same purpose.
            apt-get install -y nginx-light wrk || apt-get install -y nginx wrk
        else
            ((EUID == 0)) || die "nginx is missing; install it: sudo apt-get install -y nginx-light"
            log "installing nginx"
            apt-get update
            apt-get install -y nginx-light || apt-get install -y nginx
        fi
        NGINX_BIN=$(command -v nginx || echo /usr/sbin/nginx)
    fi
    local tools=("$NGINX_BIN" taskset python3 curl timeout)
    ((want_wrk)) && tools=("$NGINX_BIN" wrk taskset python3 curl timeout)
    for tool in "${tools[@]}"; do
        command -v "$tool" >/dev/null || die "missing tool: $tool"
    done
    # The protected path: openssl makes the RSA key pair and signs the token; HAProxy is the
    # contender validating it natively (Debian's haproxy is 2.6+, which has jwt_verify).
    HAPROXY_BIN=${HAPROXY_BIN:-$(command -v haproxy || { [[ -x /usr/sbin/haproxy ]] && echo /usr/sbin/haproxy; } || true)}
    local need_pkgs=()
    if ((WANT_JWT || WANT_TLS)) && ! command -v openssl >/dev/null; then need_pkgs+=(openssl); fi
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
}

# --- binaries -----------------------------------------------------------------------------
bench_portico_bin() {
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
}

# The executable of a `harness = false` bench target, built with the release profile.
cargo_bench_bin() { # name
    (cd "$REPO" && cargo build --release --bench "$1" --message-format=json |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$1")
}

# The bare Pingora reference: same Pingora, allocator and release profile, none of portico.
bench_bare_bin() {
    if [[ -n ${BARE_BIN:-} ]]; then
        [[ -x $BARE_BIN ]] || die "BARE_BIN=$BARE_BIN is not an executable"
    elif has_contender pingora || has_contender pingora+tls || has_contender pingora~ws || has_contender pingora+duties; then
        log "building the bare Pingora reference (cargo build --release --bench bare_pingora)"
        BARE_BIN=$(cargo_bench_bin bare_pingora) || die "cannot build benches/bare_pingora.rs"
        [[ -x $BARE_BIN ]] || die "no bare_pingora executable"
    fi
}

# Everything started from here on (proxies, upstream, load generators, the memory client)
# inherits it. With autogroup scheduling (the default on Linux desktops and these VMs) a nice
# value only counts among the processes of one session, so the script runs in a session of
# its own (bench_own_session) and lowers its session's autogroup niceness as well. Both end
# with the run.
bench_renice() {
    if ((NICE != 0)); then
        renice -n "$NICE" -p $$ >/dev/null || die "cannot renice to $NICE (set NICE=0)"
        if [[ -n ${_PORTICO_BENCH_OWN_SESSION:-} && -w /proc/$$/autogroup ]]; then
            echo "$NICE" >/proc/$$/autogroup || die "cannot set the autogroup niceness (set NICE=0)"
        fi
    fi
}

bench_deadline() { # seconds from now
    is_uint "$1" || die "MAX_SECONDS must be a non-negative integer"
    DEADLINE=$((SECONDS + $1))
}
check_deadline() {
    ((SECONDS <= DEADLINE)) || die "over the time budget (MAX_SECONDS=$MAX_SECONDS) before: $1"
}

# --- processes and cleanup ----------------------------------------------------------------
STARTED=() # "pid:signal" of everything the script started, stopped in reverse

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
            echo "$BENCH: pid $pid did not stop; killing it" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if ((rc == 0 && KEEP_TMP == 0)); then
        rm -rf "$TMP"
    else
        # The access logs of portico+log and portico+jwt can be large; the rest is small and useful.
        rm -f "$TMP"/*.access.log
        echo "$BENCH: temp dir kept: $TMP" >&2
    fi
    exit "$rc"
}

bench_setup_tmp() { # name prefix of the temp dir
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    chmod 755 "$TMP" # nginx workers drop to an unprivileged user and must reach their temp dirs
    trap cleanup EXIT
    trap 'echo "$BENCH: interrupted" >&2; exit 130' INT
    trap 'echo "$BENCH: terminated" >&2; exit 143' TERM
    # Every process started from here on inherits it: as many descriptors as allowed.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

# Descriptors every process the script starts must be able to open: run.sh's memory mode
# holds its connections in one proxy and in its one client at once, each with a few dozen
# descriptors of its own besides (listeners, epoll, logs, upstream connections). Raises the
# soft limit, and the hard one where allowed (root with CAP_SYS_RESOURCE, up to fs.nr_open),
# for this shell and so for everything it starts; dies saying why when it cannot, instead of
# letting the proxy fail accept() with EMFILE halfway through (Pingora then sleeps a second
# per failure, and the client waits on connections nobody accepts).
bench_need_fds() { # connections what (e.g. MEM_CONNS=20000)
    local slack=128 need hard
    need=$(($1 + slack))
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < need)); then
        ulimit -Hn "$need" 2>/dev/null ||
            die "$2 needs $need open files per process, but the hard limit is $hard and cannot be raised here (root needs CAP_SYS_RESOURCE; in a container: --ulimit nofile=$need:$need; fs.nr_open is $(cat /proc/sys/fs/nr_open 2>/dev/null || echo '?')): raise it, or ask for $((hard - slack)) connections or fewer"
    fi
    if [[ $(ulimit -Sn) != unlimited ]] && (($(ulimit -Sn) < need)); then
        ulimit -Sn "$need" || die "cannot raise the open-file limit to $need for $2"
    fi
    log "open-file limit $(ulimit -Sn) (hard $(ulimit -Hn)): enough for $2"
}

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
    while ! curl -fsS -k -o /dev/null --max-time 1 "$1" 2>/dev/null; do
        kill -0 "$2" 2>/dev/null || { tail -n 30 "$TMP"/*.log >&2 || true; die "$3 exited while starting"; }
        ((SECONDS < until)) || die "$3 not ready at $1 after $4 s"
        sleep 0.1
    done
}

# --- configs and processes ----------------------------------------------------------------
bench_ports() {
    local nports=$((20 + 2 * ${#CONTENDER_LIST[@]})) ports i c
    ports=$(free_ports "$nports") || die "cannot find $nports free ports from $PORT_BASE"
    read -r UPSTREAM_PORT NGINX_PORT PORTICO_PORT PORTICO_ADMIN LOG_PORT LOG_ADMIN JWT_PORT JWT_ADMIN \
        HAPROXY_PORT RES_PORT RES_ADMIN BARE_PORT NOJWT_PORT NOJWT_ADMIN FORGED_PORT FORGED_ADMIN \
        NGINX_TLS_PORT BARE_TLS_PORT PORTICO_TLS_PORT PORTICO_TLS_ADMIN VARIANT_PORTS <<<"$ports"
    read -r -a VARIANT_PORTS <<<"$VARIANT_PORTS"
    declare -gA PORT PID MEASURE_PIDS ADMIN
    PORT[pingora]=$BARE_PORT
    PORT[pingora+tls]=$BARE_TLS_PORT
    PORT[nginx+tls]=$NGINX_TLS_PORT
    PORT[portico+tls]=$PORTICO_TLS_PORT
    ADMIN[portico+tls]=$PORTICO_TLS_ADMIN
    i=0
    for c in "${CONTENDER_LIST[@]}"; do
        [[ $c == portico~* || $c == pingora~ws || $c == pingora+duties ]] || continue
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
    # Access logs of the contenders that write one (truncated before each measured run).
    declare -gA ACCESS_LOG=([portico+log]=$TMP/portico-log.access.log [portico+jwt]=$TMP/portico-jwt.access.log
        [portico+nojwt]=$TMP/portico-nojwt.access.log [portico+forged]=$TMP/portico-forged.access.log)
}

# --- the token ----------------------------------------------------------------------------
# A fresh RSA-2048 key pair per run and one long-lived RS256 access token (RFC 9068 profile:
# typ at+jwt) signed with it. portico+jwt reads the public key from a local PEM file, and
# haproxy+jwt loads the same file into jwt_verify's key cache at start.
JWT_ISSUER=https://auth.portico-bench.test
JWT_AUDIENCE=portico-bench
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
bench_mint_token() {
    JWT_PRIVKEY=$TMP/jwt.key.pem
    JWT_PUBKEY=$TMP/jwt.pub.pem
    ((WANT_JWT)) || return 0
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$JWT_PRIVKEY" 2>/dev/null ||
        die "openssl could not generate an RSA key"
    openssl pkey -in "$JWT_PRIVKEY" -pubout -out "$JWT_PUBKEY" || die "openssl could not write the public key"
    local now
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
}

start_nginx() { # name conf cpu -> sets $started_pid
    mkdir -p "$TMP/$1.tmp"
    taskset -c "$3" "$NGINX_BIN" -p "$TMP" -c "$2" -g 'daemon off; master_process on;' \
        >"$TMP/$1.log" 2>&1 &
    started_pid=$!
    STARTED+=("$started_pid:TERM")
}

bench_start_upstream() {
    check_deadline "starting the upstream"
    render "$HERE/upstream.nginx.conf.tmpl" "$TMP/upstream.conf" DIR="$TMP" PORT="$UPSTREAM_PORT"
    mkdir -p "$TMP/upstream.tmp"
    "$NGINX_BIN" -t -q -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;' || die "upstream nginx config invalid"
    start_nginx upstream "$TMP/upstream.conf" "$LOAD_CPU"
    UPSTREAM_PID=$started_pid
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/" "$UPSTREAM_PID" "upstream nginx" 10
    mapfile -t UPSTREAM_WORKERS < <(pgrep -P "$UPSTREAM_PID")
    ((${#UPSTREAM_WORKERS[@]} > 0)) || die "upstream nginx has no worker process"
    log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (core $LOAD_CPU)"
}

# The TLS contenders' certificate: self-signed, ECDSA P-256 (what a new deployment would
# use), made once per run; the clients do not verify it.
bench_tls_cert() {
    TLS_CERT=$TMP/tls.cert.pem TLS_KEY=$TMP/tls.key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$TLS_KEY" -out "$TLS_CERT" 2>"$TMP/tls.openssl.log" ||
        { cat "$TMP/tls.openssl.log" >&2; die "openssl could not make the TLS certificate"; }
}

start_nginx_proxy() { # contender stem
    local ssl="" tls="" workers=16384
    if is_tls "$1"; then
        ssl=" ssl"
        tls="        ssl_certificate $TLS_CERT;
        ssl_certificate_key $TLS_KEY;"
    fi
    # Every idle connection of the memory mode, its upstream ones and the trickle's, and a
    # sixteenth more: with fewer than 1/16 of them free nginx closes idle keep-alive
    # connections to make room ("worker_connections are not enough, reusing connections").
    local conns=$((${MEM_CONNS:-0} + 1024))
    if ((conns + conns / 8 > workers)); then workers=$((conns + conns / 8)); fi
    mkdir -p "$TMP/$2.tmp"
    render "$HERE/proxy.nginx.conf.tmpl" "$TMP/$2.conf" DIR="$TMP" NAME="$2" PORT="${PORT[$1]}" \
        UPSTREAM_PORT="$UPSTREAM_PORT" WORKER_CONNECTIONS="$workers" SSL="$ssl" TLS="$tls"
    "$NGINX_BIN" -t -q -p "$TMP" -c "$TMP/$2.conf" -g 'daemon off;' || die "$1 nginx config invalid"
    start_nginx "$2" "$TMP/$2.conf" "$PROXY_CPU"
    PID[$1]=$started_pid
    wait_http "$(contender_url "$1")/" "${PID[$1]}" "$1" 10
    # The worker does the proxying; the master only supervises.
    MEASURE_PIDS[$1]=$(pgrep -P "${PID[$1]}" | tr '\n' ' ')
    [[ -n ${MEASURE_PIDS[$1]// /} ]] || die "$1 has no worker process"
    log "$1 proxy on $(contender_url "$1") (core $PROXY_CPU), worker ${MEASURE_PIDS[$1]}"
}

start_portico() { # name stem port admin access_log plugins [route-extra [cluster-extra [server-extra [binary [listener-extra]]]]]
    local bin=${10:-$PORTICO_BIN}
    render "$HERE/portico.toml.tmpl" "$TMP/$2.toml" DIR="$TMP" NAME="$2" PORT="$3" \
        ADMIN_PORT="$4" UPSTREAM_PORT="$UPSTREAM_PORT" ACCESS_LOG="$5" PLUGINS="$6" \
        ROUTE="${7:-}" CLUSTER="${8:-}" SERVER="${9:-}" LISTENER="${11:-}" LIMITS="${PORTICO_LIMITS:-}"
    "$bin" check -c "$TMP/$2.toml" >/dev/null || die "portico rejects $TMP/$2.toml"
    taskset -c "$PROXY_CPU" "$bin" serve -c "$TMP/$2.toml" >"$TMP/$2.log" 2>&1 &
    PID[$1]=$!
    STARTED+=("${PID[$1]}:INT") # SIGINT: Pingora's fast shutdown
    MEASURE_PIDS[$1]=${PID[$1]}
    wait_http "http://127.0.0.1:$4/readyz" "${PID[$1]}" "$1" 30
    log "$1 on 127.0.0.1:$3 (admin $4, core $PROXY_CPU), pid ${PID[$1]}"
}

bench_start_contenders() {
    local c ws tag server_var bin_var route ready_by bare_env
    if ((WANT_TLS)); then bench_tls_cert; fi
    for c in "${CONTENDER_LIST[@]}"; do
        check_deadline "starting $c"
        case $c in
        nginx) start_nginx_proxy nginx nginx-proxy ;;
        nginx+tls) start_nginx_proxy nginx+tls nginx-tls ;;
        pingora | pingora+tls | pingora~ws | pingora+duties)
            # One thread, and work stealing as portico's [server] default (BARE_WORK_STEALING),
            # or on for pingora~ws; pingora+tls terminates TLS on its listener (rustls, as
            # portico); pingora+duties also makes the Pingora calls every portico request
            # makes (benches/bare_pingora.rs, PORTICO_BENCH_DUTIES).
            ws=$BARE_WORK_STEALING
            if [[ $c == pingora~ws ]]; then ws=true; fi
            bare_env=()
            if is_tls "$c"; then bare_env=(PORTICO_BENCH_TLS_CERT="$TLS_CERT" PORTICO_BENCH_TLS_KEY="$TLS_KEY"); fi
            if [[ $c == pingora+duties ]]; then bare_env+=(PORTICO_BENCH_DUTIES=1); fi
            env "${bare_env[@]}" taskset -c "$PROXY_CPU" "$BARE_BIN" "127.0.0.1:${PORT[$c]}" "127.0.0.1:$UPSTREAM_PORT" \
                1 "$ws" >"$TMP/$c.log" 2>&1 &
            PID[$c]=$!
            STARTED+=("${PID[$c]}:INT")
            MEASURE_PIDS[$c]=${PID[$c]}
            wait_http "$(contender_url "$c")/" "${PID[$c]}" "$c" 10
            log "$c (bare Pingora, work stealing $ws) on $(contender_url "$c") (core $PROXY_CPU), pid ${PID[$c]}"
            ;;
        portico)
            start_portico portico portico "$PORTICO_PORT" "$PORTICO_ADMIN" off ""
            ;;
        portico+tls)
            start_portico portico+tls portico-tls "$PORTICO_TLS_PORT" "$PORTICO_TLS_ADMIN" off "" "" "" "" "" \
                "tls = { cert = \"$TLS_CERT\", key = \"$TLS_KEY\" }"
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
}

http_status() { # url [curl args...] -> status code
    curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "${@:2}" "$1" || true
}
# Every contender must really proxy to the upstream before anything is measured.
bench_verify_contenders() {
    local c auth status url s_none s_forged s_random
    EXPECTED_BODY=$(curl -fsS "http://127.0.0.1:$UPSTREAM_PORT/")
    for c in "${CONTENDER_LIST[@]}"; do
        auth=()
        if is_protected "$c"; then auth=(-H "Authorization: Bearer $TOKEN"); fi
        curl -sS -k -D "$TMP/$c.headers" -o "$TMP/$c.body" "${auth[@]}" "$(contender_url "$c")/bench/check?x=1" >/dev/null
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
}

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

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

metric() { # admin_port name [label-filter] -> value summed over the label sets (holding the filter)
    local body
    body=$(curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null) || { echo n/a; return 0; }
    printf '%s\n' "$body" |
        awk -v m="$2" -v l="${3:-}" '($1 == m || index($1, m "{") == 1) && index($1, l) { s += $NF; f = 1 }
            END { print f ? s : "n/a" }'
}

# --- the report's header ------------------------------------------------------------------
bench_machine() { # sets COMMIT, CPU_MODEL, NGINX_VERSION
    COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ -n $(git -C "$REPO" status --porcelain --untracked-files=no -- src plugins Cargo.toml Cargo.lock 2>/dev/null) ]]; then
        COMMIT+=" (src/plugins modified in the working tree)"
    fi
    CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    NGINX_VERSION=$("$NGINX_BIN" -v 2>&1 | sed 's/.*nginx\///')
}

bench_record() { # report: appended to RESULTS unless RECORD=0
    if ((RECORD == 1)); then
        if [[ ! -s $RESULTS ]]; then
            printf '# Load benchmark results\n\nAppended by `benches/load/run.sh`; read `benches/load/README.md` first. Compare rows of one run (ratios), not numbers across runs or machines.\n\n' >"$RESULTS"
        fi
        printf '%s\n\n' "$1" >>"$RESULTS"
        log "appended to $RESULTS"
    fi
}
