#!/usr/bin/env bash
# Builds the page into dist/ with trunk (release, size-optimised `web` profile).
# Extra arguments go to `trunk build` (e.g. --dist DIR). Assets use relative URLs, so the same
# build serves at / and under a GitHub Pages project path.
# Without arguments the build is skipped when dist/ is newer than every input (FORCE=1 rebuilds).
set -euo pipefail
cd "$(dirname "$0")/.."
# trunk finds wasm-opt (npm binaryen 132) and wasm-bindgen on PATH at the versions Trunk.toml pins.
export PATH="$PWD/node_modules/.bin:$HOME/.cargo/bin:$PATH"
stamp=dist/.built
if [ $# -eq 0 ] && [ -z "${FORCE:-}" ] && [ -f "$stamp" ] \
  && [ -z "$(find src web pkg Cargo.toml Cargo.lock Trunk.toml .cargo -newer "$stamp" -print -quit 2>/dev/null)" ]; then
  echo "dist/ is up to date (FORCE=1 rebuilds)"
  exit 0
fi
trunk build --release "$@"
wasm=$(ls dist/*.wasm)
echo "built dist/: $(basename "$wasm") $(stat -c %s "$wasm") bytes, $(gzip -9 -c "$wasm" | wc -c) gzipped"
[ $# -eq 0 ] && touch "$stamp"
exit 0
