# Filled in by the install/packaging work (CMake package config + pkg-config file).
