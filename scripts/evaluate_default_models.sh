#!/usr/bin/env bash
# Evaluate the default models (models/*.onnx) on held-out data: the table in docs/results.md and models/README.md.
#   usage: scripts/evaluate_default_models.sh [EVAL_DIR]     (default: runs/eval)
# Held-out sets: the validation scenes of roadscene / rgbdd (same split as training) with a fixed-seed
# synthetic misalignment, and a synthetic rig rendered with a seed used nowhere else (true parallax).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data="${NMR_DATA:-$root/../shared/data}"
eval_dir="${1:-runs/eval}"
py=.venv/bin/python
nmr=.venv/bin/nmr
mkdir -p "$eval_dir"

[ -f "$eval_dir/roadscene_val/manifest.csv" ] || $py scripts/make_misaligned_manifest.py --kind lwir \
  --pairs "$data/roadscene/crop_LR_visible" "$data/roadscene/cropinfrared" --out "$eval_dir/roadscene_val"
[ -f "$eval_dir/rgbdd_val/manifest.csv" ] || $py scripts/make_misaligned_manifest.py --kind depth \
  --pairs "$data/rgbdd/RGB" "$data/rgbdd/Depth" --moving-suffix _RGB --fixed-suffix _HR_gt --scene-prefix 11 \
  --out "$eval_dir/rgbdd_val"
[ -f "$eval_dir/synth_val/rgb_lwir/manifest.csv" ] || $nmr synth --out "$eval_dir/synth_val_bag" --duration 1.0 \
  --seed 777 --size-scale 0.5 --export-pairs "$eval_dir/synth_val" --overwrite

run() {  # name model manifest
  $nmr evaluate --model "$2" --manifest "$3" --out "$eval_dir/$1.json" --backend onnxruntime > "$eval_dir/$1.txt"
  tail -n 1 "$eval_dir/$1.txt" | sed "s/^/$1: /"
}
run roadscene_rgb_lwir models/rgb_lwir.onnx "$eval_dir/roadscene_val/manifest.csv"
run rgbdd_rgb_depth models/rgb_depth.onnx "$eval_dir/rgbdd_val/manifest.csv"
run synth_rgb_lwir models/rgb_lwir.onnx "$eval_dir/synth_val/rgb_lwir/manifest.csv"
run synth_rgb_depth models/rgb_depth.onnx "$eval_dir/synth_val/rgb_depth/manifest.csv"
# The bar a dense model must beat: the best global homography fitted to each pair's ground truth.
for set in "roadscene_val/manifest.csv lwir" "rgbdd_val/manifest.csv depth" "synth_val/rgb_lwir/manifest.csv lwir" \
           "synth_val/rgb_depth/manifest.csv depth"; do
  read -r manifest kind <<< "$set"
  $py benchmarks/homography_oracle.py --manifest "$eval_dir/$manifest" --kind "$kind"
done
