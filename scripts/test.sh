#!/usr/bin/env bash
# The project's one test command: set up what a fresh machine lacks, then run every test.
# Release profile on purpose: the same build as `cargo run --release`, and burn's CPU kernels
# are far too slow unoptimised.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
cargo test --release --locked
