#!/usr/bin/env bash
# Train, export and evaluate the default models in models/ from the development data in ../shared/data.
# This is the exact recipe behind models/README.md. CPU settings (reduced resolution, small T and D);
# on a GPU raise data.net_hw, optim.batch_size, optim.epochs and drop the model.* overrides.
#   usage: scripts/train_default_models.sh [RUNS_DIR]      (default: runs/default_models)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data="${NMR_DATA:-$root/../shared/data}"
runs="${1:-runs/default_models}"
nmr=.venv/bin/nmr
common=(--config config/train.yaml
        --set data.net_hw=[128,160] --set augment.enabled=true
        --set model.translation_ngf=32 --set model.translation_blocks=6 --set model.discriminator_ndf=32
        --set optim.batch_size=4 --set optim.epochs=40 --set run.steps_per_epoch=40
        --set run.val_max_pairs=24 --set run.threads=1 --set data.workers=1 --set run.image_every=5)

# rgb_lwir: roadscene (FLIR ADAS), pre-aligned pairs + synthetic misalignment; split by scene (file stem)
$nmr train --pair rgb_lwir --pairs "$data/roadscene/crop_LR_visible" "$data/roadscene/cropinfrared" \
  --out "$runs/rgb_lwir" "${common[@]}" &
# rgb_depth: rgbdd, split by 10-minute capture blocks (stem prefix of 11 characters)
$nmr train --pair rgb_depth --pairs "$data/rgbdd/RGB" "$data/rgbdd/Depth" --moving-suffix _RGB \
  --fixed-suffix _HR_gt --set data.scene_prefix=11 --out "$runs/rgb_depth" "${common[@]}" &
wait

for pair in rgb_lwir rgb_depth; do
  cp "$runs/$pair/best.pt" "models/$pair.pt"
  $nmr export --model "models/$pair.pt" --out "models/$pair.onnx"
done
