#!/usr/bin/env bash
# Installs the Debian packages qtrain needs (only those missing), then configures (Release) and builds qtrain.
#
#   scripts/setup.sh [--with-bench-extras] [--no-build]
#
#   --with-bench-extras   also install the optional benchmark peers (python3-torch with OpenBLAS, libdnnl-dev)
#   --no-build            install packages only
#
# Environment:
#   QTRAIN_BUILD_DIR       build directory (default: <repo>/build)
#   QTRAIN_CMAKE_ARGS      extra arguments for the CMake configure step (word-split)
#   QTRAIN_JOBS            parallel build jobs (default: nproc)
#   QTRAIN_SETUP_DRY_RUN=1 print the packages that are missing and the commands that would install them; change
#                          nothing and build nothing
#   QTRAIN_SETUP_ASSUME_MISSING="pkg …"  treat these packages as missing (to exercise the install path)
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

with_extras=0
build=1
for arg in "$@"; do
  case "$arg" in
    --with-bench-extras) with_extras=1 ;;
    --no-build) build=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) qtrain_die "unknown option '$arg' (valid: --with-bench-extras, --no-build, --help)" ;;
  esac
done
dry_run=${QTRAIN_SETUP_DRY_RUN:-0}
[[ $dry_run == 0 ]] || dry_run=1

# --- packages ---------------------------------------------------------------------------------------------------
packages=(g++ cmake pkg-config
          libhwy-dev libcpuinfo-dev libpthreadpool-dev libxnnpack-dev libgtest-dev libbenchmark-dev
          zlib1g-dev nlohmann-json3-dev libcli11-dev dataset-fashion-mnist)
# A build tool: Ninja when present, else make (installed if neither is there).
if ! command -v ninja > /dev/null && ! command -v make > /dev/null; then
  packages+=(make)
fi
if [[ $with_extras == 1 ]]; then
  # Debian's python3-torch calls whatever libblas.so.3 the alternatives system selects: without OpenBLAS that is
  # the unoptimized reference BLAS, and every matrix product in the PyTorch baseline runs 5-10x slow (measured:
  # its ViT 97 images/s against 695 with OpenBLAS). The fair baseline needs an optimized BLAS.
  packages+=(python3-torch libopenblas0-openmp libdnnl-dev)
fi

is_installed() {
  local pkg=$1
  if [[ " ${QTRAIN_SETUP_ASSUME_MISSING:-} " == *" $pkg "* ]]; then
    return 1
  fi
  [[ $(dpkg-query -W -f='${Status}' "$pkg" 2> /dev/null || true) == "install ok installed" ]]
}

if ! command -v dpkg-query > /dev/null; then
  qtrain_log "dpkg-query not found: this is not a Debian-based system. Install the equivalents of these packages" \
             "yourself, then rerun: ${packages[*]}"
  missing=()
else
  missing=()
  for pkg in "${packages[@]}"; do
    is_installed "$pkg" || missing+=("$pkg")
  done
fi

if ((${#missing[@]} == 0)); then
  qtrain_log "all required packages are installed"
else
  qtrain_log "missing packages: ${missing[*]}"
  if [[ $(id -u) == 0 ]]; then
    as_root=()
  elif command -v sudo > /dev/null; then
    as_root=(sudo)
  elif [[ $dry_run == 1 ]]; then
    as_root=('<as root>')
  else
    qtrain_die "installing packages needs root, and sudo is not available. As root, run:
    apt-get update && apt-get install -y ${missing[*]}
then rerun $0."
  fi
  apt_install=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
               "${missing[@]}")
  apt_update=("${as_root[@]}" apt-get update)
  if [[ $dry_run == 1 ]]; then
    qtrain_log "dry run, would run: ${apt_update[*]}"
    qtrain_log "dry run, would run: ${apt_install[*]}"
  else
    qtrain_log "running: ${apt_update[*]}"
    "${apt_update[@]}" || qtrain_die "'apt-get update' failed (network, or sudo refused?). As root, run:
    apt-get update && apt-get install -y ${missing[*]}"
    qtrain_log "running: ${apt_install[*]}"
    "${apt_install[@]}" || qtrain_die "could not install: ${missing[*]}. Check the apt output above (are the" \
                                      "packages available in your Debian release?)"
  fi
fi

if [[ $dry_run == 1 ]]; then
  qtrain_log "dry run: would configure and build in $QTRAIN_BUILD_DIR"
  exit 0
fi
[[ $build == 1 ]] || exit 0

# --- configure and build ------------------------------------------------------------------------------------------
configure_args=(-S "$QTRAIN_ROOT" -B "$QTRAIN_BUILD_DIR" -DCMAKE_BUILD_TYPE=Release)
# Choose a generator only for a new build directory (CMake refuses to switch generators later).
if [[ ! -f $QTRAIN_BUILD_DIR/CMakeCache.txt ]] && command -v ninja > /dev/null; then
  configure_args+=(-G Ninja)
fi
# shellcheck disable=SC2206  # QTRAIN_CMAKE_ARGS is a word list on purpose
configure_args+=(${QTRAIN_CMAKE_ARGS:-})
qtrain_log "configuring: cmake ${configure_args[*]}"
cmake "${configure_args[@]}"
jobs=${QTRAIN_JOBS:-$(nproc 2> /dev/null || echo 2)}
qtrain_log "building with $jobs jobs in $QTRAIN_BUILD_DIR"
cmake --build "$QTRAIN_BUILD_DIR" -j "$jobs"
