#!/usr/bin/env bash
# Trains the five recipes of SPEC part B side by side on one device, each in runs/<recipe>/ with
# its log in runs/<recipe>.log (one progress line a minute). Running it again resumes unfinished
# runs from their checkpoints and skips finished ones (those with a model.bpk).
# A run carried between sessions in git (checkpoints/<run>/, see checkpoints/README.md) continues
# from there when runs/<run> has no checkpoint of its own.
# Usage: [RECIPES="denoiser pure-noise"] bash scripts/train_all.sh [DP] [DEVICE] [SECONDS]
#   DP       the dp binary (default target/release/dp)
#   DEVICE   cpu | wgpu | cuda (default wgpu)
#   SECONDS  stop every run after this long, checkpointed as Ctrl-C does (default: no limit)
#   RECIPES  which recipes (default all five; leave out those already shipped to save GPU time)
set -uo pipefail
cd "$(dirname "$0")/.."
dp=${1:-target/release/dp}
device=${2:-wgpu}
limit=${3:-0}
recipes=${RECIPES:-class-flow time-flow denoiser pure-noise class-flow-constant}
mkdir -p runs
for recipe in $recipes; do
  case "$recipe" in class-flow | time-flow | denoiser | pure-noise | class-flow-constant) ;;
    *) echo "unknown recipe '$recipe' in RECIPES (class-flow time-flow denoiser pure-noise class-flow-constant)" >&2; exit 2 ;;
  esac
done
for recipe in $recipes; do
  dir=runs/${recipe//-/_}
  [ -f "$dir/model.bpk" ] && { echo "$dir: finished"; continue; }
  carried=checkpoints/${dir#runs/}
  if [ ! -f "$dir/checkpoint.ckpt" ] && [ -f "$carried/checkpoint.ckpt" ]; then
    mkdir -p "$dir" && cp "$carried"/* "$dir"/ && echo "$dir: continuing the run carried in $carried"
  fi
  resume=()
  [ -f "$dir/checkpoint.ckpt" ] && resume=(--resume)
  stop=()
  [ "$limit" -gt 0 ] && stop=(timeout -s INT "$limit")
  # The denoisers' batch 256 runs as 4 passes of 64 on a GPU (burn 0.22's GPU reductions are
  # wrong beyond 65,504 values; BatchNorm reduces over pass x 784): same step, same noise.
  micro=()
  case "$recipe:$device" in denoiser:cpu | pure-noise:cpu) ;; denoiser:* | pure-noise:*) micro=(--micro-batch 64) ;; esac
  echo "$dir: training ${resume[*]} ${micro[*]}"
  "${stop[@]}" "$dp" --device "$device" train "$recipe" --out "$dir" "${resume[@]}" "${micro[@]}" --checkpoint-minutes 2 >>"$dir.log" 2>&1 &
done
wait
for recipe in $recipes; do
  dir=runs/${recipe//-/_}
  if [ -f "$dir/model.bpk" ]; then echo "$dir: finished"; else echo "$dir: not finished (run again to resume)"; fi
  tail -n 2 "$dir.log"
done
