#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each, one after the other (never in parallel).
#
#   fuzz/run.sh [-t SECONDS] [--dev] [--merge] [TARGET...]
#
#   -t SECONDS  time per target (default 30)
#   --dev       build without optimisation (what CI does: a cold build of every dependency
#               for the nightly toolchain takes far less; each second runs fewer inputs)
#   --merge     afterwards, merge what the run found into fuzz/corpus/<target>, minimised
#               (for a long run done by hand; CI never writes to the corpus)
#   TARGET      one or more of: fuzz/run.sh --list (default: all)
#
# The committed corpus is read, never written: each run writes new inputs to a scratch
# directory given first. A crash, panic or hang (an input over 10 s) fails the run and
# leaves the input in fuzz/artifacts/<target>/; `cargo +nightly fuzz run -s none TARGET
# fuzz/artifacts/TARGET/crash-…` replays it. Needs a nightly toolchain and cargo-fuzz.
# One line per target goes to stdout at the end: target, seconds, execs, cov, ft, result.
set -euo pipefail
cd "$(dirname "$0")"

seconds=30
merge=0
# No sanitizer: the code under test is safe Rust, and without ASan the build is faster
# and every second of the budget runs several times more inputs.
build=(-s none)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t) seconds="$2"; shift 2 ;;
    --dev) build+=(--dev); shift ;;
    --merge) merge=1; shift ;;
    --list) cargo +nightly fuzz list; exit 0 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

dict_of() {
  case "$1" in
    path_route) echo dict/path_route.dict ;;
    version) echo dict/version.dict ;;
    jwt_auth) echo dict/jwt_auth.dict ;;
    jwks) echo dict/jwks.dict ;;
    token_form|introspect_revoke) echo dict/forms.dict ;;
    config) echo dict/config.dict ;;
    proxy_protocol) echo dict/proxy_protocol.dict ;;
  esac
}

if [ ${#targets[@]} -eq 1 ]; then
  cargo +nightly fuzz build "${build[@]}" "${targets[0]}" >&2
else
  cargo +nightly fuzz build "${build[@]}" >&2
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary=()
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  dict=$(dict_of "$t")
  [ -n "$dict" ] && args+=(-dict="$dict")
  echo "== $t: $seconds s" >&2
  log="$scratch/$t.log"
  if cargo +nightly fuzz run "${build[@]}" "$t" "$scratch/$t" "corpus/$t" -- "${args[@]}" >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    failed=1
    grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" >&2 || tail -20 "$log" >&2
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo "?")
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo "?")
  summary+=("$t $seconds s: ${execs:-?} execs, cov ${cov:-?}, ft ${ft:-?}: $result")
  if [ "$merge" = 1 ] && [ "$result" = ok ]; then
    cargo +nightly fuzz run "${build[@]}" "$t" "corpus/$t" "$scratch/$t" -- -merge=1 >/dev/null 2>&1 || true
  fi
done
printf '%s\n' "${summary[@]}"
exit $failed
