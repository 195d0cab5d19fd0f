#!/usr/bin/env bash
# Installs a qtrain build tree into a temporary prefix, then builds and runs the consumer program against it,
# either through find_package(qtrain) or through pkg-config: the GEMM check, then a model trained and saved by one
# process and loaded by a second, which must print the same test accuracy (and a high one).
#   run.sh find_package|pkg_config <qtrain build dir> <install libdir, e.g. lib> [c++ compiler]
set -euo pipefail

mode=${1:?usage: run.sh find_package|pkg_config <build dir> <libdir> [c++ compiler]}
build_dir=${2:?missing qtrain build directory}
libdir=${3:?missing install libdir (CMAKE_INSTALL_LIBDIR)}
cxx=${4:-${CXX:-c++}}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/qtrain-consumer-${mode}.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix

step() { printf '\n== %s\n' "$*"; }

step "installing $build_dir into $prefix"
cmake --install "$build_dir" --prefix "$prefix" > "$work/install.log" || {
  cat "$work/install.log"
  echo "run.sh: 'cmake --install $build_dir' failed (is the tree built?)" >&2
  exit 1
}

case "$mode" in
  find_package)
    if [[ ! -f $prefix/$libdir/cmake/qtrain/qtrainConfig.cmake ]]; then
      echo "run.sh: the install has no $libdir/cmake/qtrain/qtrainConfig.cmake (see cmake/Install.cmake's" \
           "configure messages: a library is probably not in the qtrainTargets export set yet)" >&2
      exit 1
    fi
    step "configuring the consumer with CMAKE_PREFIX_PATH=$prefix"
    # Only the temporary prefix may provide qtrain: never a system-wide install or the user package registry.
    cmake -S "$here" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_CXX_COMPILER="$cxx" \
          -DCMAKE_BUILD_TYPE=Release -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    found=$(sed -n 's/^qtrain_DIR:PATH=//p' "$work/build/CMakeCache.txt")
    if [[ $found != "$prefix/$libdir/cmake/qtrain" ]]; then
      echo "run.sh: find_package(qtrain) found '$found', not the temporary install" >&2
      exit 1
    fi
    step "building the consumer"
    cmake --build "$work/build"
    exe=$work/build/consumer
    ;;
  pkg_config)
    export PKG_CONFIG_PATH=$prefix/$libdir/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
    step "pkg-config --cflags --libs qtrain (PKG_CONFIG_PATH=$PKG_CONFIG_PATH)"
    flags=$(pkg-config --cflags --libs qtrain)
    echo "$flags"
    step "compiling the consumer"
    # shellcheck disable=SC2086  # the flags are a word list
    (set -x; "$cxx" -std=c++20 -O2 -Wall -Wextra -Werror "$here/main.cc" -o "$work/consumer" $flags)
    exe=$work/consumer
    ;;
  *)
    echo "run.sh: unknown mode '$mode' (find_package or pkg_config)" >&2
    exit 2
    ;;
esac

# Shared-library builds install without an RPATH; point the loader at the temporary prefix.
export LD_LIBRARY_PATH=$prefix/$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

step "consumer eval of a missing file: a usage error (exit code 2) naming it"
status=0
"$exe" eval "$work/missing.qtm" 2> "$work/missing.err" || status=$?
cat "$work/missing.err"
if [[ $status != 2 ]] || ! grep -q "missing.qtm" "$work/missing.err"; then
  echo "run.sh: expected exit code 2 and a message naming missing.qtm, got exit code $status" >&2
  exit 1
fi

step "consumer gemm"
"$exe" gemm

step "consumer train $work/tiny.qtm"
"$exe" train "$work/tiny.qtm" | tee "$work/train.out"

step "consumer eval $work/tiny.qtm (a second process)"
"$exe" eval "$work/tiny.qtm" | tee "$work/eval.out"

# The line "test accuracy: CORRECT/COUNT" of each run: the loaded model must get exactly the trained one's, and
# the training must have learnt (four classes: chance is 25%).
trained=$(grep '^test accuracy: ' "$work/train.out")
loaded=$(grep '^test accuracy: ' "$work/eval.out")
if [[ $trained != "$loaded" ]]; then
  echo "run.sh: the loaded model's '$loaded' differs from the trained model's '$trained'" >&2
  exit 1
fi
IFS=/ read -r correct count <<< "${trained#test accuracy: }"
min_percent=80
if (( correct * 100 < min_percent * count )); then
  echo "run.sh: test accuracy $correct/$count is below $min_percent% (chance: 25%): the model did not learn" >&2
  exit 1
fi
echo "run.sh: trained and loaded models agree ($correct/$count, at least $min_percent% required)"
