#pragma once
/// \file version.hpp
/// The single source of the library version; CMake parses these three lines.

#define Q2N_VERSION_MAJOR 0
#define Q2N_VERSION_MINOR 1
#define Q2N_VERSION_PATCH 0
