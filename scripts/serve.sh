#!/usr/bin/env bash
# The main job: set up a fresh machine, build the page with the shipped MNIST weights from pkg/,
# and serve it locally. Usage: bash scripts/serve.sh [PORT]   (default 8080)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh web
bash scripts/build-web.sh
exec node tests/browser/serve.mjs --dir dist --port "${1:-8080}"
