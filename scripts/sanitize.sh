#!/usr/bin/env bash
# Builds qtrain with AddressSanitizer and UndefinedBehaviorSanitizer (-DQTRAIN_SANITIZE=ON, RelWithDebInfo) in
# build-sanitize/ and runs the whole ctest suite there. Any sanitizer report fails the test that triggered it
# (UBSan does not recover; ASan aborts; leaks are reported at exit).
#
#   scripts/sanitize.sh [ctest arguments…]   e.g. scripts/sanitize.sh -R Checkpoint
#
# Environment: QTRAIN_SANITIZE_BUILD_DIR (default <repo>/build-sanitize), QTRAIN_JOBS (build jobs, default 2),
# QTRAIN_TEST_JOBS (ctest jobs, default 2), QTRAIN_TEST_TIMEOUT (seconds per test without its own, default 1800).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$QTRAIN_ROOT/scripts/setup.sh" --no-build

build=${QTRAIN_SANITIZE_BUILD_DIR:-$QTRAIN_ROOT/build-sanitize}
generator=()
[[ -f $build/CMakeCache.txt ]] || ! command -v ninja > /dev/null || generator=(-G Ninja)
start=$(date +%s)
cmake -S "$QTRAIN_ROOT" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQTRAIN_SANITIZE=ON \
      -DQTRAIN_BUILD_BENCH=OFF > /dev/null
cmake --build "$build" -j "${QTRAIN_JOBS:-2}"
built=$(date +%s)
qtrain_log "built in $((built - start)) s; running the tests"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:check_initialization_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
rc=0
ctest --test-dir "$build" --output-on-failure --no-tests=error -j "${QTRAIN_TEST_JOBS:-2}" \
      --timeout "${QTRAIN_TEST_TIMEOUT:-1800}" "$@" || rc=$?
qtrain_log "sanitizer run: build $((built - start)) s, tests $(($(date +%s) - built)) s, exit $rc"
exit $rc
