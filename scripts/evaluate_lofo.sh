#!/usr/bin/env bash
# Leave-one-family-out (issue 19): each rgb_lwir model trained with one misalignment family held back, scored on
# every family of the held-out roadscene scenes, on llvip scene 01 and on the depth-parallax family (held back
# from all of them). The sets are scripts/evaluate_default_models.sh's (run it first, same EVAL_DIR).
#   usage: scripts/evaluate_lofo.sh EVAL_DIR HELD=MODEL_DIR [HELD=MODEL_DIR ...]
#          (HELD: the family the model in MODEL_DIR/rgb_lwir.onnx never saw, or none for the control)
# Writes EVAL_DIR/lofo/<HELD>/<set>.json and prints the table (scripts/lofo_table.py), also in EVAL_DIR/lofo/table.md.
# The models behind docs/results.md: scripts/device_train.py --lofo-init <pre-issue-19 rgb_lwir> --lofo homography
# distortion none (the pre-issue-19 model was trained on affine + elastic only, so only homography and
# distortion can be held back cleanly from that start).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval_dir="${1:?usage: scripts/evaluate_lofo.sh EVAL_DIR HELD=MODEL_DIR ...}"
shift
sets=(roadscene_affine roadscene_homography roadscene_nonrigid roadscene_distortion roadscene_composite
      roadscene_parallax llvip_mixed)
for set in "${sets[@]}"; do
  [ -f "$eval_dir/sets/$set/manifest.csv" ] || { echo "$eval_dir/sets/$set: missing; run scripts/evaluate_default_models.sh $eval_dir first" >&2; exit 2; }
done
for spec in "$@"; do
  held="${spec%%=*}"; dir="${spec#*=}"
  mkdir -p "$eval_dir/lofo/$held"
  for set in "${sets[@]}"; do
    out="$eval_dir/lofo/$held/$set.json"
    [ -f "$out" ] || .venv/bin/nmr evaluate --model "$dir/rgb_lwir.onnx" --backend onnxruntime \
      --manifest "$eval_dir/sets/$set/manifest.csv" --out "$out" > "$eval_dir/lofo/$held/$set.txt"
  done
done
.venv/bin/python scripts/lofo_table.py "$eval_dir/lofo" | tee "$eval_dir/lofo/table.md"
