#!/usr/bin/env bash
# Builds the page into dist/ with trunk (release, size-optimised `web` profile).
# Extra arguments go to `trunk build` (e.g. --dist DIR). Assets use relative URLs, so the same
# build serves at / and under a GitHub Pages project path.
set -euo pipefail
cd "$(dirname "$0")/.."
# trunk finds wasm-opt (npm binaryen 132) and wasm-bindgen on PATH at the versions Trunk.toml pins.
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"
trunk build --release "$@"
wasm=$(ls dist/*.wasm)
echo "built dist/: $(basename "$wasm") $(stat -c %s "$wasm") bytes, $(gzip -9 -c "$wasm" | wc -c) gzipped"
