#!/usr/bin/env bash
# Trains the five recipes of SPEC part B side by side on one device, each in runs/<recipe>/ with
# its log in runs/<recipe>.log (one progress line a minute). Running it again resumes unfinished
# runs from their checkpoints and skips finished ones (those with a model.bpk).
# Usage: bash scripts/train_all.sh [DP] [DEVICE] [SECONDS]
#   DP       the dp binary (default target/release/dp)
#   DEVICE   cpu | wgpu | cuda (default wgpu)
#   SECONDS  stop every run after this long, checkpointed as Ctrl-C does (default: no limit)
set -uo pipefail
cd "$(dirname "$0")/.."
dp=${1:-target/release/dp}
device=${2:-wgpu}
limit=${3:-0}
mkdir -p runs
for recipe in class-flow time-flow denoiser pure-noise class-flow-constant; do
  dir=runs/${recipe//-/_}
  [ -f "$dir/model.bpk" ] && { echo "$dir: finished"; continue; }
  resume=()
  [ -f "$dir/checkpoint.ckpt" ] && resume=(--resume)
  stop=()
  [ "$limit" -gt 0 ] && stop=(timeout -s INT "$limit")
  echo "$dir: training ${resume[*]}"
  "${stop[@]}" "$dp" --device "$device" train "$recipe" --out "$dir" "${resume[@]}" --checkpoint-minutes 2 >>"$dir.log" 2>&1 &
done
wait
for recipe in class-flow time-flow denoiser pure-noise class-flow-constant; do
  dir=runs/${recipe//-/_}
  if [ -f "$dir/model.bpk" ]; then echo "$dir: finished"; else echo "$dir: not finished (run again to resume)"; fi
  tail -n 2 "$dir.log"
done
