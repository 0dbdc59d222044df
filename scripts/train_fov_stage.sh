#!/usr/bin/env bash
# Stage 4 of the default rgb_lwir model (session 5, CPU): continue the session-4 model with the field-of-view
# family added to the cue-free supervised recipe (affine, homography, nonrigid, distortion, composite, fov;
# parallax held back), one torch thread, then export. Earlier stages: `git show 538319a:scripts/train_default_models.sh` (CPU),
# scripts/device_train.py (GPU), scripts/continue_default_models.sh (CPU continuation, session 4).
#   usage: scripts/train_fov_stage.sh [RUNS_DIR]   (default runs/s5; resumes what is there)
# Environment: NMR_INIT (default models/rgb_lwir.pt; after the model was replaced: git show
#   3ff1aad:models/rgb_lwir.pt), NMR_MODELS_OUT (default runs/s5_models), NMR_DATA (default ../shared/data),
#   NMR_EPOCHS (default 200).
# As run: 200 epochs x 26 steps = 5,200 steps, batch 8, net 128x160, one-cycle peak 1.5e-4 (the run was started
# with 150 epochs and extended to 200 with --resume at epoch 4). rgb_depth was not continued (issue 20: the
# RGB-depth pair registers through the rig).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
runs="${1:-runs/s5}"
data="${NMR_DATA:-$root/../shared/data}"
init="${NMR_INIT:-models/rgb_lwir.pt}"
out="${NMR_MODELS_OUT:-runs/s5_models}"
nmr=.venv/bin/nmr
mkdir -p "$runs" "$out"
NMR_DATA="$data" scripts/val_manifest.sh lwir runs/val_lwir
resume=(); [ -f "$runs/rgb_lwir/last.pt" ] && resume=(--resume)
llvip=(--pairs "$data/llvip/visible" "$data/llvip/infrared" 2 0.3)
OMP_NUM_THREADS=1 $nmr train --pair rgb_lwir --pairs "$data/roadscene/crop_LR_visible" \
  "$data/roadscene/cropinfrared" "${llvip[@]}" "${llvip[@]}" "${llvip[@]}" --init "$init" \
  --set optim.epochs="${NMR_EPOCHS:-200}" --val-manifest runs/val_lwir/manifest.csv --out "$runs/rgb_lwir" \
  --config config/train.yaml --set model.registration.arch=corr --set loss.objective=supervised \
  --set augment.enabled=true --set "augment.families=[affine,homography,nonrigid,distortion,composite,fov]" \
  --set optim.schedule=onecycle --set optim.lr=1.5e-4 --set optim.weight_decay=1e-4 \
  --set loss.contrastive_only_steps=0 --set augment.warmup_epochs=0 --set run.steps_per_epoch=0 \
  --set run.val_max_pairs=24 --set data.net_hw=[128,160] --set optim.batch_size=8 --set run.threads=1 \
  --set data.workers=0 --set run.log_every=50 --set run.val_every=10 --set run.keep_every=25 "${resume[@]}" \
  >> "$runs/lwir.log" 2>&1
# R_Phi of the last epoch (last.pt holds the optimiser too: keep the registration network only)
.venv/bin/python scripts/keep_registration.py "$runs/rgb_lwir/last.pt" "$out/rgb_lwir.pt"
$nmr export --model "$out/rgb_lwir.pt" --out "$out/rgb_lwir.onnx"
