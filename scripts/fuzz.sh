#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) with clang, AddressSanitizer and UndefinedBehaviorSanitizer, and runs each
# for a bounded time, starting from its seed corpus tests/fuzz_corpus/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   default: 60 seconds each, every target
#                                           targets: idx_images idx_labels idx_gzip model checkpoint cifar10 policy
#
# Prints one summary line per target (executions, executions/s, coverage, corpus size, findings) and exits 1 if
# any target found a crash, a sanitizer report, a timeout, a leak or an allocation over the limit. A finding's
# input is kept in build-fuzz/artifacts/<target>/: reproduce it with build-fuzz/fuzz/fuzz_<target> FILE, fix it,
# and copy the file into tests/fuzz_corpus/<target>/ (ctest replays the corpus as a regression test).
#
# Environment: QTRAIN_FUZZ_BUILD_DIR (default <repo>/build-fuzz), QTRAIN_JOBS (build jobs, default 2),
# QTRAIN_FUZZ_ARGS (extra libFuzzer flags, word-split), QTRAIN_CXX (default clang++).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

all_targets=(idx_images idx_labels idx_gzip model checkpoint cifar10 policy)
seconds=60
if (($# > 0)); then
  case "$1" in
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
  esac
  [[ $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || qtrain_die "SECONDS must be a positive integer (got '$1'; see --help)"
  seconds=$1
  shift
fi
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || qtrain_die "unknown target '$t' (valid: ${all_targets[*]})"
done

# The project's dependencies (no build), then clang and its runtime libraries (libFuzzer, sanitizers).
"$QTRAIN_ROOT/scripts/setup.sh" --no-build
cxx=${QTRAIN_CXX:-clang++}
fuzzer_lib_present() { compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a" > /dev/null; }
if ! command -v "$cxx" > /dev/null || ! fuzzer_lib_present; then
  as_root=()
  [[ $(id -u) == 0 ]] || as_root=(sudo)
  qtrain_log "installing clang and libclang-rt-dev (libFuzzer)"
  "${as_root[@]}" apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang libclang-rt-dev
fi

build=${QTRAIN_FUZZ_BUILD_DIR:-$QTRAIN_ROOT/build-fuzz}
generator=()
[[ -f $build/CMakeCache.txt ]] || ! command -v ninja > /dev/null || generator=(-G Ninja)
cmake -S "$QTRAIN_ROOT" -B "$build" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DQTRAIN_FUZZ=ON -DQTRAIN_BUILD_TESTS=OFF -DQTRAIN_BUILD_BENCH=OFF > /dev/null
cmake --build "$build" -j "${QTRAIN_JOBS:-2}" --target "${targets[@]/#/fuzz_}"

status=0
summary=()
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t
  artifacts=$build/artifacts/$t
  mkdir -p "$corpus" "$artifacts"
  log=$build/fuzz_$t.log
  qtrain_log "fuzzing $t for $seconds s (log: $log)"
  # shellcheck disable=SC2086  # QTRAIN_FUZZ_ARGS is a word list on purpose
  if ! "$build/fuzz/fuzz_$t" "$corpus" "$QTRAIN_ROOT/tests/fuzz_corpus/$t" -max_total_time="$seconds" \
       -timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 \
       -artifact_prefix="$artifacts/" ${QTRAIN_FUZZ_ARGS:-} > "$log" 2>&1; then
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  files=$(find "$corpus" -type f | wc -l)
  findings=$(find "$artifacts" -type f | wc -l)
  summary+=("$(printf '%-11s %4ss  %10s execs  %7s/s  cov %5s  ft %6s  corpus %5s  findings %s' "$t" "$seconds" \
               "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$files" "$findings")")
  ((findings == 0)) || status=1
done
printf '%s\n' "${summary[@]}"
((status == 0)) || qtrain_log "findings or errors: see the logs and $build/artifacts/"
exit $status
