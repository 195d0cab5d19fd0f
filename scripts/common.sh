# Shared by the scripts in this folder (sourced, not run). Sets QTRAIN_ROOT and QTRAIN_BUILD_DIR.
# shellcheck shell=bash

QTRAIN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Build directory: $QTRAIN_BUILD_DIR if set (a relative path is taken from the current directory), else build/.
QTRAIN_BUILD_DIR=${QTRAIN_BUILD_DIR:-$QTRAIN_ROOT/build}
if [[ $QTRAIN_BUILD_DIR != /* ]]; then
  QTRAIN_BUILD_DIR=$PWD/$QTRAIN_BUILD_DIR
fi
export QTRAIN_ROOT QTRAIN_BUILD_DIR

qtrain_log() { printf '[qtrain] %s\n' "$*" >&2; }
qtrain_die() {
  printf '[qtrain] error: %s\n' "$*" >&2
  exit 1
}
