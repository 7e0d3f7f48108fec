#!/usr/bin/env bash
# Throughput of a compressing route (issue 21, item 8): portico proxying a 10 KiB JSON body
# from one nginx upstream through a route without `compress` (`plain`: what every route
# does today), and through a route with `compress = {}` asked for identity, gzip, br and
# zstd, in one run, in interleaved rounds. Prints requests/s, the bytes each response
# carried, and each case's requests/s as a ratio to `plain` (median over the rounds).
#
#   benches/load/compression.sh                                  # 3 rounds x 10 s per case
#   ROUNDS=1 DURATION=2 CONNECTIONS=2 PORTICO_BIN=target/debug/portico benches/load/compression.sh
#
# Environment (defaults in brackets):
#   ROUNDS [3]          interleaved rounds (plain identity gzip br zstd plain ...)
#   DURATION [10]       seconds per measured wrk run
#   WARMUP [2]          seconds of wrk warm-up before each measured run (0 = none)
#   CONNECTIONS [50]    wrk -c
#   PORTICO_BIN         this binary instead of `cargo build --release --bin portico`
#   NGINX_BIN [nginx]   the upstream
#   PROXY_CPU [0]       core portico runs on
#   LOAD_CPU [1]        core wrk and the upstream run on
#   PORT_BASE [18100]   first port tried; every port is checked free on 127.0.0.1
#   KEEP_TMP [0]        1 = keep the temp dir (configs, logs, raw wrk output)
#
# Same layout as run.sh (portico with one worker thread on one core, wrk and the upstream
# on the other); needs nginx, wrk, taskset, curl and python3.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
NGINX_BIN=${NGINX_BIN:-nginx}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
PORT_BASE=${PORT_BASE:-18100}
KEEP_TMP=${KEEP_TMP:-0}
CASES=(plain identity gzip br zstd)

die() { echo "compression.sh: $*" >&2; exit 1; }
for v in ROUNDS DURATION WARMUP CONNECTIONS PROXY_CPU LOAD_CPU PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number"
done
((ROUNDS >= 1 && DURATION >= 1 && CONNECTIONS >= 1)) || die "ROUNDS, DURATION and CONNECTIONS must be >= 1"
for tool in "$NGINX_BIN" wrk taskset curl python3; do
    command -v "$tool" >/dev/null || die "needs $tool"
done

if [[ -z ${PORTICO_BIN:-} ]]; then
    (cd "$REPO" && cargo build --release --bin portico)
    PORTICO_BIN=$REPO/target/release/portico
fi
PORTICO_BIN=$(realpath "$PORTICO_BIN")

TMP=$(mktemp -d /tmp/portico-compress.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP_TMP == 1 ]]; then echo "compression.sh: temp dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# Free ports from PORT_BASE up (nothing can bind them now), into the named variables.
next_port=$PORT_BASE
take_ports() {
    local var
    for var in "$@"; do
        until python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' \
            "$next_port" 2>/dev/null; do next_port=$((next_port + 1)); done
        printf -v "$var" '%s' "$next_port"
        next_port=$((next_port + 1))
    done
}
take_ports UPSTREAM_PORT PORT ADMIN_PORT

# The body: the same shape as tests/compression.rs and benches/compression.rs.
python3 - "$TMP/items.json" <<'EOF'
import sys
parts, i = [], 0
while len("[" + ",".join(parts) + "]") < 10 * 1024 - 80:
    parts.append('{"id":%d,"sku":"SKU-%05d","name":"item %d","in_stock":%s}' % (i, i * 7, i, "true" if i % 3 == 0 else "false"))
    i += 1
open(sys.argv[1], "w").write("[" + ",".join(parts) + "]")
EOF
BODY_BYTES=$(stat -c %s "$TMP/items.json")
# nginx's worker (not root) reads the body.
chmod 755 "$TMP" && chmod 644 "$TMP/items.json"

mkdir -p "$TMP/upstream.tmp"
cat >"$TMP/upstream.conf" <<EOF
worker_processes 1;
pid $TMP/upstream.pid;
error_log $TMP/upstream.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/upstream.tmp/body;
    proxy_temp_path $TMP/upstream.tmp/proxy;
    fastcgi_temp_path $TMP/upstream.tmp/fastcgi;
    uwsgi_temp_path $TMP/upstream.tmp/uwsgi;
    scgi_temp_path $TMP/upstream.tmp/scgi;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    gzip off;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        root $TMP;
        location / { default_type application/json; try_files /items.json =404; }
    }
}
EOF
cat >"$TMP/portico.toml" <<EOF
[server]
threads = 1
pid_file = "$TMP/portico.pid"
upgrade_sock = "$TMP/portico.upgrade.sock"
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1

[[listeners]]
address = "127.0.0.1:$PORT"

[admin]
address = "127.0.0.1:$ADMIN_PORT"

[logging]
access_log = "off"

[[routes]]
id = "plain"
path = "/plain"
cluster = "upstream"

[[routes]]
id = "compressed"
path = "/z"
cluster = "upstream"
compress = {}

[clusters.upstream]
endpoints = [{ address = "127.0.0.1:$UPSTREAM_PORT" }]
EOF

taskset -c "$LOAD_CPU" "$NGINX_BIN" -p "$TMP" -c "$TMP/upstream.conf" -g 'daemon off;' &
PIDS+=($!)
taskset -c "$PROXY_CPU" "$PORTICO_BIN" serve -c "$TMP/portico.toml" >"$TMP/portico.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" && break
    sleep 0.1
done
curl -fs -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" || { cat "$TMP/portico.log" >&2; die "portico is not ready"; }

# What each case sends, and what it must get back, checked before anything is measured.
accept_of() {
    case $1 in
    plain) echo "gzip, br, zstd" ;; # a route without compress ignores it
    identity) echo "identity" ;;
    *) echo "$1" ;;
    esac
}
path_of() { if [[ $1 == plain ]]; then echo /plain/items; else echo /z/items; fi; }
declare -A BYTES
for c in "${CASES[@]}"; do
    headers=$(curl -fs -D - -o "$TMP/check.$c" -H "Accept-Encoding: $(accept_of "$c")" "http://127.0.0.1:$PORT$(path_of "$c")") ||
        die "$c: request failed"
    encoding=$(printf '%s' "$headers" | tr -d '\r' | awk -F': ' 'tolower($1) == "content-encoding" { print $2 }')
    case $c in
    plain | identity)
        [[ -z $encoding ]] || die "$c: unexpected Content-Encoding $encoding"
        cmp -s "$TMP/check.$c" "$TMP/items.json" || die "$c: body differs from the upstream's"
        ;;
    *) [[ $encoding == "$c" ]] || die "$c: Content-Encoding '$encoding', expected $c" ;;
    esac
    BYTES[$c]=$(stat -c %s "$TMP/check.$c")
done

run_wrk() { # case seconds outfile
    timeout -s INT $(($2 + 30)) taskset -c "$LOAD_CPU" \
        wrk -t1 -c"$CONNECTIONS" -d"$2"s -H "Accept-Encoding: $(accept_of "$1")" \
        "http://127.0.0.1:$PORT$(path_of "$1")" >"$3" 2>&1 || { cat "$3" >&2; die "wrk failed for $1"; }
    if grep -q "Non-2xx" "$3"; then cat "$3" >&2; die "$1: non-2xx answers"; fi
}
declare -A RPS
for r in $(seq 1 "$ROUNDS"); do
    for c in "${CASES[@]}"; do
        if ((WARMUP > 0)); then run_wrk "$c" "$WARMUP" "$TMP/wrk.$c.$r.warmup.txt"; fi
        run_wrk "$c" "$DURATION" "$TMP/wrk.$c.$r.txt"
        rps=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/wrk.$c.$r.txt")
        [[ -n $rps ]] || { cat "$TMP/wrk.$c.$r.txt" >&2; die "no Requests/sec for $c"; }
        RPS[$c]="${RPS[$c]:-} $rps"
        echo "round $r $c: $rps req/s"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
plain=$(median <<<"${RPS[plain]}")
echo
echo "10 KiB JSON body ($BODY_BYTES bytes), $CONNECTIONS connections, $ROUNDS x ${DURATION}s, $("$PORTICO_BIN" --version 2>/dev/null | head -n1)"
printf '%-9s %12s %15s %16s\n' case "req/s" "body bytes" "ratio to plain"
for c in "${CASES[@]}"; do
    m=$(median <<<"${RPS[$c]}")
    printf '%-9s %12.0f %15s %16.3f\n' "$c" "$m" "${BYTES[$c]}" "$(awk -v a="$m" -v b="$plain" 'BEGIN { print a / b }')"
done
