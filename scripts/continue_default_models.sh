#!/usr/bin/env bash
# Stage 3 of the default models (session 4, CPU): continue the GPU-stage models on the 2-core CPU with the
# same cue-free supervised recipe (five families; parallax held back), one torch thread per pair, both pairs
# in parallel, then export. Stages 1-2: `git show 538319a:scripts/train_default_models.sh` (the
# script of that name is now the session-6/7 recipe); the GPU stage: scripts/device_train.py.
#   usage: scripts/continue_default_models.sh [RUNS_DIR]   (default runs/s4; resumes what is there)
# Environment: NMR_INIT_DIR (default models: the GPU-stage rgb_lwir.pt / rgb_depth.pt; for a rerun after
#   the models were replaced: git show 95ecea0:models/<file>), NMR_MODELS_OUT (default runs/s4_models),
#   NMR_DATA (default ../shared/data), NMR_EPOCHS_LWIR / NMR_EPOCHS_DEPTH (default 110 / 100).
# As run: rgb_lwir 110 epochs x 26 steps = 2,860 steps, rgb_depth 100 x 42 = 4,200 steps, batch 8, net
# 128x160, one-cycle peak 1.5e-4. The runs were planned longer (250 / 150 epochs) and shrunk twice with
# --resume to fit the session (at epochs 28 / 18 to 150 / 100, and after both stopped at epoch 87 on a NaN
# training image, fixed in nmr.training.augment.inverse_on_grid, to 110 / 100): this single pass
# reproduces the recipe up to those schedule changes. ~50 min per pair on a quiet core.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs="${1:-runs/s4}"
data="${NMR_DATA:-$root/../shared/data}"
init="${NMR_INIT_DIR:-models}"
out="${NMR_MODELS_OUT:-runs/s4_models}"
nmr=.venv/bin/nmr
mkdir -p "$runs" "$out"
common=(--config config/train.yaml --set model.registration.arch=corr --set loss.objective=supervised
  --set augment.enabled=true --set "augment.families=[affine,homography,nonrigid,distortion,composite]"
  --set optim.schedule=onecycle --set optim.lr=1.5e-4 --set optim.weight_decay=1e-4
  --set loss.contrastive_only_steps=0 --set augment.warmup_epochs=0 --set run.steps_per_epoch=0
  --set run.val_max_pairs=24 --set data.net_hw=[128,160] --set optim.batch_size=8 --set run.threads=1
  --set data.workers=0 --set run.log_every=50 --set run.val_every=10 --set run.keep_every=10)
resume() { [ -f "$runs/$1/last.pt" ] && echo --resume || true; }
# the training-scene validation manifests (progress only)
NMR_DATA="$data" scripts/val_manifest.sh lwir runs/val_lwir
NMR_DATA="$data" scripts/val_manifest.sh depth runs/val_depth
llvip=(--pairs "$data/llvip/visible" "$data/llvip/infrared" 2 0.3)
OMP_NUM_THREADS=1 nice -n 15 $nmr train --pair rgb_lwir --pairs "$data/roadscene/crop_LR_visible" \
  "$data/roadscene/cropinfrared" "${llvip[@]}" "${llvip[@]}" "${llvip[@]}" --init "$init/rgb_lwir.pt" \
  --set optim.epochs="${NMR_EPOCHS_LWIR:-110}" --val-manifest runs/val_lwir/manifest.csv --out "$runs/rgb_lwir" \
  "${common[@]}" $(resume rgb_lwir) >> "$runs/lwir.log" 2>&1 &
lwir=$!
OMP_NUM_THREADS=1 nice -n 15 $nmr train --pair rgb_depth --pairs "$data/rgbdd/RGB" "$data/rgbdd/Depth" \
  --moving-suffix _RGB --fixed-suffix _HR_gt --set data.scene_prefix=11 --set data.normalisation.mode=robust \
  --init "$init/rgb_depth.pt" --set optim.epochs="${NMR_EPOCHS_DEPTH:-100}" \
  --val-manifest runs/val_depth/manifest.csv --out "$runs/rgb_depth" "${common[@]}" $(resume rgb_depth) \
  >> "$runs/depth.log" 2>&1 &
depth=$!
wait "$lwir"; wait "$depth"   # set -e: a failed run stops here (see its log)
# R_Phi of the last epoch (last.pt holds the optimiser too: keep the registration network only)
for pair in rgb_lwir rgb_depth; do
  .venv/bin/python scripts/keep_registration.py "$runs/$pair/last.pt" "$out/$pair.pt"
  $nmr export --model "$out/$pair.pt" --out "$out/$pair.onnx"
done
