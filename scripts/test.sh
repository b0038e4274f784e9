#!/usr/bin/env bash
# The project's one test command: set up what a fresh machine lacks, then run every test:
# the Rust tests (release profile on purpose: the same build as `cargo run --release`, and burn's
# CPU kernels are far too slow unoptimised), then the page built by trunk and driven in headless
# Chromium (WebGPU on SwiftShader, and the CPU fallback) by Playwright.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
cargo test --release --locked
bash scripts/build-web.sh
node --test --test-reporter=spec tests/browser/
