# Every dependency is a Debian package. A missing one stops configure with the package to install.
find_package(PkgConfig QUIET)
if(NOT PkgConfig_FOUND)
  message(FATAL_ERROR "pkg-config not found. Install it with: sudo apt-get install pkg-config "
                      "(or run scripts/setup.sh, which installs everything qtrain needs).")
endif()

# qtrain_require_pkg(<prefix> <pkg-config module> <debian package>)
function(qtrain_require_pkg prefix module debian)
  pkg_check_modules(${prefix} QUIET IMPORTED_TARGET GLOBAL ${module})
  if(NOT ${prefix}_FOUND)
    message(FATAL_ERROR "Missing dependency '${module}'. Install it with: sudo apt-get install ${debian} "
                        "(or run scripts/setup.sh).")
  endif()
endfunction()

# qtrain_require_lib(<imported target> <library name> <header> <debian package>)
# For Debian packages that ship no pkg-config file (pthreadpool, XNNPACK).
function(qtrain_require_lib target lib header debian)
  find_library(${target}_LIBRARY NAMES ${lib})
  find_path(${target}_INCLUDE_DIR NAMES ${header})
  if(NOT ${target}_LIBRARY OR NOT ${target}_INCLUDE_DIR)
    message(FATAL_ERROR "Missing dependency '${lib}' (${header}). Install it with: sudo apt-get install ${debian} "
                        "(or run scripts/setup.sh).")
  endif()
  add_library(${target} UNKNOWN IMPORTED GLOBAL)
  set_target_properties(${target} PROPERTIES IMPORTED_LOCATION "${${target}_LIBRARY}"
                                             INTERFACE_INCLUDE_DIRECTORIES "${${target}_INCLUDE_DIR}")
endfunction()

qtrain_require_pkg(HWY libhwy libhwy-dev)
qtrain_require_pkg(CPUINFO libcpuinfo libcpuinfo-dev)
qtrain_require_pkg(ZLIB_PC zlib zlib1g-dev)
qtrain_require_pkg(NLOHMANN nlohmann_json nlohmann-json3-dev)
qtrain_require_pkg(CLI11_PC CLI11 libcli11-dev)
qtrain_require_lib(qtrain_dep_pthreadpool pthreadpool pthreadpool.h libpthreadpool-dev)
find_package(Threads REQUIRED)

if(QTRAIN_BUILD_TESTS)
  qtrain_require_pkg(GTEST gtest_main libgtest-dev)
  qtrain_require_pkg(HWY_TEST libhwy-test libhwy-dev)
endif()
if(QTRAIN_BUILD_BENCH)
  qtrain_require_pkg(BENCHMARK benchmark libbenchmark-dev)
  qtrain_require_lib(qtrain_dep_xnnpack XNNPACK xnnpack.h libxnnpack-dev)
endif()
