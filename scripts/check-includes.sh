#!/usr/bin/env bash
# Checks the include graph of include/q2n:
#  1. no detail header includes a public q2n header (detail/ is the bottom layer);
#  2. no quantizer header includes another quantizer's header (shared code lives in detail/
#     or in quantizers/options.hpp);
#  3. projection.hpp (the quantizer author's include) needs Eigen only: it does not pull in
#     xsimd, whatever the compiler finds on its include path.
# Usage: scripts/check-includes.sh [CXX] [EIGEN_INCLUDE_DIR]
set -euo pipefail
cd "$(dirname "$0")/../include"
cxx=${1:-c++}
eigen=${2:-/usr/include/eigen3}
status=0
for f in q2n/detail/*.hpp; do
  if grep -nE '#include <q2n/[^d][^/]*(/|\.hpp)|#include <q2n/[a-z_]+\.hpp>' "$f" | grep -v 'q2n/detail/'; then
    echo "check-includes: $f includes a public header"; status=1
  fi
done
for f in q2n/quantizers/*.hpp; do
  if grep -nE '#include <q2n/quantizers/' "$f" | grep -v 'quantizers/options.hpp'; then
    echo "check-includes: $f includes another quantizer's header"; status=1
  fi
done
deps=$(echo '#include <q2n/projection.hpp>' | "$cxx" -std=c++17 -x c++ -M -I. -I"$eigen" - )
if grep -q xsimd <<<"$deps"; then
  echo "check-includes: q2n/projection.hpp pulls in xsimd"; status=1
fi
[[ $status -eq 0 ]] && echo "check-includes: ok"
exit $status
