#!/usr/bin/env bash
# The training-scene validation manifest of the recipes: 24 cue-free pairs of TRAINING scenes, mixed families,
# seed 99, so every script that monitors progress sees the same pairs wherever it writes them. Writes
# OUT_DIR/manifest.csv unless it is there.
#   usage: scripts/val_manifest.sh lwir|depth OUT_DIR   (NMR_DATA: default ../shared/data)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kind="${1:?usage: scripts/val_manifest.sh lwir|depth OUT_DIR}"; out="${2:?usage: scripts/val_manifest.sh lwir|depth OUT_DIR}"
data="${NMR_DATA:-$root/../shared/data}"
[ -f "$out/manifest.csv" ] && exit 0
case "$kind" in
  lwir) sources=(--pairs "$data/roadscene/crop_LR_visible" "$data/roadscene/cropinfrared") ;;
  depth) sources=(--pairs "$data/rgbdd/RGB" "$data/rgbdd/Depth" --moving-suffix _RGB --fixed-suffix _HR_gt
                  --scene-prefix 11) ;;
  *) echo "the kind must be lwir or depth, not $kind" >&2; exit 2 ;;
esac
"$root/.venv/bin/python" "$root/scripts/make_misaligned_manifest.py" --kind "$kind" --split train --max-pairs 24 \
  --seed 99 "${sources[@]}" --out "$out"
