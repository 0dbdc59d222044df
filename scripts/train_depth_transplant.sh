#!/usr/bin/env bash
# An rgb_depth corr R_Phi started from a trained rgb_lwir (session 6, issue 19): the rgb_lwir weights
# transplanted to the depth pair (scripts/transplant_registration.py: the depth validity channel's weights
# start at zero, range-robust inverse-depth normalisation), then supervised flow on rgbdd's training blocks.
# Why a transplant: fine-tuning an old rgb_depth cue-free collapsed to zero flow and a random start had not
# left it after 800 steps, while a transplanted rgb_lwir already matches (docs/results.md).
#   usage: scripts/train_depth_transplant.sh RUN_DIR RGB_LWIR.pt [EXTRA nmr train ARGS]
# Environment: NMR_EPOCHS (default 140 x 25 = 3,500 steps of batch 8 at 128x160, ~45 min on one thread beside
#   another run), NMR_DATA (default ../shared/data), NMR_VAL_DEPTH (default runs/val_depth).
# Five families (parallax held back), one-cycle peak 3e-4, magnitudes 0.5x -> 1x over the first 3 epochs.
# Writes RUN_DIR/rgb_depth.{pt,onnx} from the last epoch. Resumes what is in RUN_DIR.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
usage="usage: scripts/train_depth_transplant.sh RUN_DIR RGB_LWIR.pt [EXTRA nmr train ARGS]"
run="${1:?$usage}"; source="${2:?$usage}"; shift 2
data="${NMR_DATA:-$root/../shared/data}"
nmr=.venv/bin/nmr
py=.venv/bin/python
mkdir -p "$run"
[ -s "$run/init.pt" ] || $py scripts/transplant_registration.py --source "$source" --pair rgb_depth \
  --normalisation '{mode: robust}' --out "$run/init.pt"
val="${NMR_VAL_DEPTH:-runs/val_depth}"   # training-scene validation (scripts/val_manifest.sh)
NMR_DATA="$data" scripts/val_manifest.sh depth "$val"
resume=(); [ -f "$run/train/last.pt" ] && resume=(--resume)
OMP_NUM_THREADS=1 $nmr train --pair rgb_depth --pairs "$data/rgbdd/RGB" "$data/rgbdd/Depth" --moving-suffix _RGB \
  --fixed-suffix _HR_gt --set data.scene_prefix=11 --set data.normalisation.mode=robust --init "$run/init.pt" \
  --val-manifest "$val/manifest.csv" --out "$run/train" --config config/train.yaml \
  --set loss.objective=supervised --set augment.enabled=true \
  --set "augment.families=[affine,homography,nonrigid,distortion,composite]" \
  --set augment.warmup_epochs=3 --set augment.warmup_start=0.5 --set optim.schedule=onecycle --set optim.lr=3e-4 \
  --set optim.weight_decay=1e-4 --set optim.epochs="${NMR_EPOCHS:-140}" --set loss.contrastive_only_steps=0 \
  --set run.steps_per_epoch=25 --set run.val_max_pairs=24 --set data.net_hw=[128,160] --set optim.batch_size=8 \
  --set run.threads=1 --set data.workers=0 --set run.log_every=50 --set run.val_every=20 --set run.keep_every=35 \
  "${resume[@]}" "$@" >> "$run/train.log" 2>&1
$py scripts/keep_registration.py "$run/train/last.pt" "$run/rgb_depth.pt"
$nmr export --model "$run/rgb_depth.pt" --out "$run/rgb_depth.onnx"
