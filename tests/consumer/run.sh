#!/usr/bin/env bash
# Installs a qtrain build tree into a temporary prefix, then builds and runs the consumer program against it,
# either through find_package(qtrain) or through pkg-config.
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

step "running the consumer"
# Shared-library builds install without an RPATH; point the loader at the temporary prefix.
LD_LIBRARY_PATH=$prefix/$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$exe"
