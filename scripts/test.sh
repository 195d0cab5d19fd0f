#!/usr/bin/env bash
# Installs what is missing, builds, and runs the test suites.
#
#   scripts/test.sh [ctest arguments…]   e.g. scripts/test.sh -R consumer
#
# Environment: QTRAIN_BUILD_DIR (see setup.sh), QTRAIN_TEST_JOBS (default 2), QTRAIN_TEST_TIMEOUT (seconds per
# test without its own TIMEOUT, default 900).
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$QTRAIN_ROOT/scripts/setup.sh"

qtrain_log "running the tests in $QTRAIN_BUILD_DIR"
ctest --test-dir "$QTRAIN_BUILD_DIR" --output-on-failure --no-tests=error -j "${QTRAIN_TEST_JOBS:-2}" \
      --timeout "${QTRAIN_TEST_TIMEOUT:-900}" "$@"
