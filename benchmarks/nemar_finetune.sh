#!/usr/bin/env bash
# Does NeMAR fine-tuning help a supervised warm start? (issue 11, deliverable 3)
# A user's recordings are stood in for by synthetic-rig bags rendered with seeds used nowhere else (201-204);
# they are trained on as UNLABELLED bags (loss.objective=nemar: their ground truth is read only for the
# validation EPE), starting from the shipped supervised model (--init), T and D warming up for 2 epochs with
# R frozen. Scored with `nmr evaluate` on the held-out rig scene (seed 777) against the warm start alone.
#   usage: benchmarks/nemar_finetune.sh [PAIR] [RUNS_DIR]     (default rgb_lwir runs/finetune)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pair="${1:-rgb_lwir}"
runs="${2:-runs/finetune}"
nmr=.venv/bin/nmr
mkdir -p "$runs"
bags=()
for seed in 201 202 203 204; do
  [ -d "$runs/user_$seed" ] || $nmr synth --out "$runs/user_$seed" --duration 1 --seed "$seed" --size-scale 0.5 \
    --workers 1 > /dev/null
  bags+=("$runs/user_$seed")
done
eval_pairs="${NMR_EVAL_DIR:-runs/eval}/synth_val"   # the held-out rig of scripts/evaluate_default_models.sh
[ -f "$eval_pairs/$pair/manifest.csv" ] || $nmr synth --out "$runs/eval777_bag" --duration 1.0 --seed 777 \
  --size-scale 0.5 --export-pairs "$eval_pairs" --overwrite --workers 1 > /dev/null
$nmr train --pair "$pair" --bag "${bags[@]}" --out "$runs/$pair" --init "models/$pair.pt" \
  --set loss.objective=nemar --set data.net_hw=[128,160] \
  --set model.translation_ngf=16 --set model.translation_blocks=6 --set model.discriminator_ndf=16 \
  --set optim.batch_size=4 --set optim.epochs=12 --set optim.freeze_registration_epochs=2 \
  --set optim.lr=2e-4 --set optim.lr_registration=5e-5 --set optim.decay_start=0.7 --set data.val_fraction=0 \
  --set run.threads=1 --set data.workers=0 --set run.keep_every=0 --set run.log_every=25 ${NMR_FT_ARGS:-}
for model in "models/$pair.pt" "$runs/$pair/last.pt"; do
  $nmr evaluate --model "$model" --manifest "$eval_pairs/$pair/manifest.csv" --backend torch \
    --out "$runs/$(basename "$(dirname "$model")")_$pair.json" | tail -n 1 | sed "s|^|$model: |"
done
