#!/usr/bin/env bash
# Installs the Debian packages q2n builds, tests and benchmarks with; a no-op when all are present.
set -euo pipefail
packages=(g++ cmake make ninja-build libeigen3-dev libxsimd-dev nlohmann-json3-dev doctest-dev libbenchmark-dev
          clang libclang-rt-14-dev libopenmpi-dev openmpi-bin liblapacke-dev libopenblas0-pthread)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm installs the llama.cpp test harness (scripts/setup-node.sh, run by the tests). Any npm will
# do (Debian's runs on its Node 18; the harness brings its own Node 20), so a machine that has
# one from elsewhere keeps it.
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
