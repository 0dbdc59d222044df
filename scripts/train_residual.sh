#!/usr/bin/env bash
# Train a learned residual on top of registration through the rig (issue 20, item 4) and score it against the
# geometric flow alone on held-out rigs: the exact recipe behind docs/results.md ("A learned residual on top").
#   usage: scripts/train_residual.sh PAIR [RUNS_DIR]        PAIR = rgb_lwir | rgb_depth (default runs/residual)
# Data: drawn rigs (`nmr synth --rig-seed S`: each its own lenses, poses and LWIR time offset), rig seeds 11
# (1 s) and 12-21 (1.5 s), plus the default rig with scene seeds 41 and 42 (1.5 s). Each pair gives
# (scripts/make_residual_manifest.py) one row pre-warped by the TRUE rig's geometric flow (as `nmr evaluate
# --rig`) and one pre-warped by a perturbed rig (calibration error, nmr.training.residual_pairs.Jitter's
# defaults), each with its exact residual truth. Validation during training: rig seed 22. Held out, never
# trained on: scene seed 777 with the default rig (scripts/evaluate_rig.sh's set) and rig seed 901.
# Stage 1: from the shipped models/PAIR.pt, supervised, net 128x160, batch 8, one-cycle LR 1e-4, 16 x 25 steps,
# one torch thread. Stage 2 (NMR_MORE_EPOCHS=32, 0 = none): from stage 1, one-cycle LR 5e-5, 32 x 25 steps.
# 2-core CPU, shared: ~6 min per 400 steps alone, 3x that under load.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pair="${1:?usage: scripts/train_residual.sh rgb_lwir|rgb_depth [RUNS_DIR]}"
runs="${2:-runs/residual}"
more="${NMR_MORE_EPOCHS:-32}"
nmr=.venv/bin/nmr
py=.venv/bin/python
mkdir -p "$runs"
synth() {  # NAME DURATION SCENE_SEED [RIG_SEED]
  [ -f "$runs/$1/rig_true.yaml" ] || $nmr synth --out "$runs/bag_$1" --duration "$2" --seed "$3" \
    ${4:+--rig-seed "$4"} --size-scale 0.5 --export-pairs "$runs/$1" --workers 1 --overwrite > "$runs/synth_$1.log"
}
sources=()
synth r11 1.0 11 11; sources+=(--source "r11=$runs/r11")
for s in 12 13 14 15 16 17 18 19 20 21; do synth "r$s" 1.5 "$s" "$s"; sources+=(--source "r$s=$runs/r$s"); done
for s in 41 42; do synth "d$s" 1.5 "$s"; sources+=(--source "d$s=$runs/d$s"); done
synth r22 1.5 22 22
synth val777 1.0 777
synth val901 1.0 901 901
[ -f "$runs/train_$pair/manifest.csv" ] || $py scripts/make_residual_manifest.py --pair "$pair" \
  --out "$runs/train_$pair" "${sources[@]}" --jitter 1 --seed 1
[ -f "$runs/val_$pair/manifest.csv" ] || $py scripts/make_residual_manifest.py --pair "$pair" \
  --out "$runs/val_$pair" --source "r22=$runs/r22" --max-rows 24
extra=(); [ "$pair" = rgb_depth ] && extra=(--set data.normalisation.mode=robust)
train() {  # OUT INIT LR EPOCHS
  local resume=(); [ -f "$runs/$1/last.pt" ] && resume=(--resume)
  $nmr train --pair "$pair" --manifest "$runs/train_$pair/manifest.csv" --val-manifest "$runs/val_$pair/manifest.csv" \
    --out "$runs/$1" --config config/train.yaml --init "$2" "${resume[@]}" \
    --set model.registration.arch=corr --set loss.objective=supervised --set augment.enabled=false \
    --set data.val_fraction=0 --set 'data.net_hw=[128,160]' --set optim.batch_size=8 --set run.threads=1 \
    --set data.workers=0 --set optim.schedule=onecycle --set optim.lr="$3" --set optim.weight_decay=1e-4 \
    --set loss.contrastive_only_steps=0 --set run.steps_per_epoch=25 --set optim.epochs="$4" \
    --set run.val_every=4 --set run.keep_every=4 --set run.log_every=25 --set run.val_max_pairs=24 "${extra[@]}" \
    >> "$runs/$1.log" 2>&1
}
last() { printf '%s/%s/epoch_%03d.pt' "$runs" "$1" "$2"; }   # the last epoch, not best.pt
[ -f "$(last "stage1_$pair" 16)" ] || train "stage1_$pair" "models/$pair.pt" 1e-4 16
models=("$(last "stage1_$pair" 16)")
if [ "$more" -gt 0 ]; then
  [ -f "$(last "stage2_$pair" "$more")" ] || train "stage2_$pair" "${models[0]}" 5e-5 "$more"
  models+=("$(last "stage2_$pair" "$more")")
fi
for set in val777 val901; do
  for model in geometry "${models[@]}"; do
    args=(); [ "$model" != geometry ] && args=(--model "$model" --backend torch)
    tag="$(basename "$(dirname "$model")")"; [ "$model" = geometry ] && tag=geometry
    $nmr evaluate --rig "$runs/$set/rig_true.yaml" --manifest "$runs/$set/$pair/manifest.csv" "${args[@]}" \
      --out "$runs/eval_${set}_$tag.json" > "$runs/eval_${set}_$tag.txt" 2>&1
    grep '^mean' "$runs/eval_${set}_$tag.txt" | sed "s/^/$set $pair $tag: /"
  done
done
