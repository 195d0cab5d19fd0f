# Installs qtrain as a CMake package (find_package(qtrain) → qtrain::engine, qtrain::quant, qtrain::kernels)
# and as a pkg-config module (pkg-config --cflags --libs qtrain). Included at the end of the root CMakeLists.txt,
# after every library target exists.
include(CMakePackageConfigHelpers)

set(QTRAIN_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/qtrain" CACHE STRING
    "Where qtrainConfig.cmake is installed (relative to the prefix)")
set(QTRAIN_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig" CACHE STRING
    "Where qtrain.pc is installed (relative to the prefix)")
mark_as_advanced(QTRAIN_INSTALL_CMAKEDIR QTRAIN_INSTALL_PKGCONFIGDIR)

set(_qtrain_libraries qtrain_kernels qtrain_quant qtrain_engine)

# Targets from outside qtrain that the exported link interfaces may name. qtrainConfig.cmake.in recreates exactly
# these (same names), so a consumer's link line resolves. A new dependency must be added in both places.
set(_qtrain_known_deps PkgConfig::HWY PkgConfig::CPUINFO PkgConfig::ZLIB_PC PkgConfig::NLOHMANN qtrain_dep_pthreadpool Threads::Threads)

# Every library must be in the export set (install(TARGETS … EXPORT qtrainTargets) with an EXPORT_NAME) before
# the package can be installed; otherwise CMake fails at generate time. While a library is still being written,
# skip the package (and say so) rather than break everyone's configure.
set(_qtrain_unexported "")
foreach(_t IN LISTS _qtrain_libraries)
  get_target_property(_export_name ${_t} EXPORT_NAME)
  if(NOT _export_name)
    list(APPEND _qtrain_unexported ${_t})
  endif()
  # Warn when a library links a non-qtrain target that qtrainConfig.cmake does not recreate.
  get_target_property(_links ${_t} LINK_LIBRARIES)
  get_target_property(_ilinks ${_t} INTERFACE_LINK_LIBRARIES)
  foreach(_dep IN LISTS _links _ilinks)
    string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" _dep "${_dep}")
    if(_dep MATCHES "^\\$<" OR NOT TARGET "${_dep}" OR _dep MATCHES "^qtrain")
      continue()
    endif()
    get_target_property(_aliased ${_dep} ALIASED_TARGET)
    if(_aliased OR _dep IN_LIST _qtrain_known_deps)
      continue()
    endif()
    message(WARNING "${_t} links '${_dep}', which cmake/qtrainConfig.cmake.in does not recreate: consumers of the "
                    "installed package will fail to link. Add it to cmake/qtrainConfig.cmake.in and "
                    "_qtrain_known_deps in cmake/Install.cmake.")
  endforeach()
endforeach()

if(_qtrain_unexported)
  message(STATUS "qtrain: not installing the CMake package yet: ${_qtrain_unexported} not exported "
                 "(needs set_target_properties(… EXPORT_NAME …) and install(TARGETS … EXPORT qtrainTargets))")
else()
  install(EXPORT qtrainTargets NAMESPACE qtrain:: FILE qtrainTargets.cmake DESTINATION ${QTRAIN_INSTALL_CMAKEDIR})
  # Lets a consumer use a build tree directly (CMAKE_PREFIX_PATH=<build dir>) without installing.
  export(EXPORT qtrainTargets NAMESPACE qtrain:: FILE ${PROJECT_BINARY_DIR}/qtrainTargets.cmake)
endif()

configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/qtrainConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/qtrainConfig.cmake
                              INSTALL_DESTINATION ${QTRAIN_INSTALL_CMAKEDIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/qtrainConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
if(NOT _qtrain_unexported)
  install(FILES ${PROJECT_BINARY_DIR}/qtrainConfig.cmake ${PROJECT_BINARY_DIR}/qtrainConfigVersion.cmake
          DESTINATION ${QTRAIN_INSTALL_CMAKEDIR})
endif()

# pkg-config. The prefix is computed from the .pc file's own location (${pcfiledir}), so the file stays right
# whatever --prefix / DESTDIR the tree is installed with.
if(IS_ABSOLUTE "${QTRAIN_INSTALL_PKGCONFIGDIR}")
  set(QTRAIN_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _rel "/qtrain-prefix/${QTRAIN_INSTALL_PKGCONFIGDIR}" "/qtrain-prefix")
  string(REGEX REPLACE "/$" "" _rel "${_rel}")
  set(QTRAIN_PC_PREFIX "\${pcfiledir}/${_rel}")
endif()
foreach(_dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_dir}}")
    set(QTRAIN_PC_${_dir} "${CMAKE_INSTALL_${_dir}}")
  else()
    set(QTRAIN_PC_${_dir} "\${prefix}/${CMAKE_INSTALL_${_dir}}")
  endif()
endforeach()
# Static archives need their dependencies on the consumer's link line; shared libraries carry them.
if(BUILD_SHARED_LIBS)
  set(QTRAIN_PC_REQUIRES "")
  set(QTRAIN_PC_REQUIRES_PRIVATE "libhwy libcpuinfo zlib")
  set(QTRAIN_PC_LIBS_PRIVATE "-lpthreadpool -pthread")
  set(QTRAIN_PC_LIBS_EXTRA "")
else()
  set(QTRAIN_PC_REQUIRES "libhwy libcpuinfo zlib")
  set(QTRAIN_PC_REQUIRES_PRIVATE "")
  set(QTRAIN_PC_LIBS_PRIVATE "")
  set(QTRAIN_PC_LIBS_EXTRA " -lpthreadpool -pthread")
endif()
if(QTRAIN_SANITIZE)  # the archives reference the sanitizer runtimes
  string(APPEND QTRAIN_PC_LIBS_EXTRA " -fsanitize=address,undefined")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/qtrain.pc.in ${PROJECT_BINARY_DIR}/qtrain.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/qtrain.pc DESTINATION ${QTRAIN_INSTALL_PKGCONFIGDIR})
