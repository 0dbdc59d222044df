#!/usr/bin/env bash
# Registration through the rig (issue 20) on the held-out synthetic rig (seed 777, the same set as
# scripts/evaluate_default_models.sh), with the TRUE rig (rig_true.yaml written by nmr synth --export-pairs):
# geometric flow only / geometric + the shipped network's residual / the network only (the old path).
#   usage: scripts/evaluate_rig.sh [EVAL_DIR] [RIG.yaml]     (default: runs/eval, the synth's true rig)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval_dir="${1:-runs/eval}"
nmr=.venv/bin/nmr
mkdir -p "$eval_dir"
[ -f "$eval_dir/synth_val/rig_true.yaml" ] && head -1 "$eval_dir/synth_val/rgb_lwir/manifest.csv" | grep -q depth || \
  $nmr synth --out "$eval_dir/synth_val_bag" --duration 1.0 --seed 777 --size-scale 0.5 \
    --export-pairs "$eval_dir/synth_val" --overwrite
rig="${2:-$eval_dir/synth_val/rig_true.yaml}"
for pair in rgb_lwir rgb_depth; do
  manifest="$eval_dir/synth_val/$pair/manifest.csv"
  for mode in geometric residual network; do
    case $mode in
      geometric) args=(--rig "$rig") ;;
      residual) args=(--rig "$rig" --model "models/$pair.onnx") ;;
      network) args=(--model "models/$pair.onnx") ;;
    esac
    $nmr evaluate "${args[@]}" --manifest "$manifest" --backend onnxruntime --out "$eval_dir/rig_$pair.$mode.json" \
      > "$eval_dir/rig_$pair.$mode.txt" 2> "$eval_dir/rig_$pair.$mode.err"
    grep '^mean' "$eval_dir/rig_$pair.$mode.txt" | sed "s/^/$pair $mode: /"
    grep '^rig-valid' "$eval_dir/rig_$pair.$mode.txt" | sed "s/^/$pair $mode: /" || true
  done
done
