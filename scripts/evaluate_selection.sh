#!/usr/bin/env bash
# Selection sets: held-out scenes that no reported number uses (the `select` split of nmr.data.pairs), for
# choosing between models, recipes and inference variants (issue 19). The reported held-out sets
# (scripts/evaluate_default_models.sh) use the `report` scenes; llvip's single held-out scene is not split and
# stays report-only.
#   usage: scripts/evaluate_selection.sh [SELECT_DIR [LABEL=MODELS_DIR ...]]   (default: runs/select new=models)
#   rgb_lwir: roadscene select scenes (17) x {affine, homography, nonrigid, distortion, composite, fov,
#             parallax} + their raw thermal frames; dev rig 7 LWIR (a rig geometry never trained on)
#   rgb_depth: rgbdd select blocks (29 pairs) x {affine, homography, nonrigid, distortion, composite,
#             parallax}; dev rig 7 depth
# NMR_REFINE_TILES: nmr evaluate --refine-tiles (default auto: the node's default, rgb_depth refined on tiles).
# NMR_VARIANTS=1 also runs benchmarks/inference_variants.py per model (once, iterate, flips, hflip, ...).
# Writes SELECT_DIR/<label>/<set>.json and prints one line per set and the mean over each pair's sets.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
data="${NMR_DATA:-$root/../shared/data}"
select_dir="${1:-runs/select}"
shift || true
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(new=models)
py=.venv/bin/python
nmr=.venv/bin/nmr
sets="$select_dir/sets"
mkdir -p "$sets"
families=(affine homography nonrigid distortion composite fov parallax)
lwir_sets=(); depth_sets=()
for k in "${!families[@]}"; do
  fam="${families[$k]}"
  [ -f "$sets/roadscene_$fam/manifest.csv" ] || $py scripts/make_misaligned_manifest.py --kind lwir --split select \
    --pairs "$data/roadscene/crop_LR_visible" "$data/roadscene/cropinfrared" --family "$fam" --seed $((3101 + k)) \
    --out "$sets/roadscene_$fam"
  lwir_sets+=("roadscene_$fam")
  [ "$fam" = fov ] && continue   # the rgb_depth models never trained on fov
  [ -f "$sets/rgbdd_$fam/manifest.csv" ] || $py scripts/make_misaligned_manifest.py --kind depth --split select \
    --pairs "$data/rgbdd/RGB" "$data/rgbdd/Depth" --moving-suffix _RGB --fixed-suffix _HR_gt --scene-prefix 11 \
    --family "$fam" --seed $((3201 + k)) --out "$sets/rgbdd_$fam"
  depth_sets+=("rgbdd_$fam")
done
[ -f "$sets/roadscene_raw/manifest.csv" ] || $py scripts/make_roadscene_raw_manifest.py --split select \
  --data "$data/roadscene" --out "$sets/roadscene_raw"
lwir_sets+=(roadscene_raw)
[ -f "$sets/rig7/rgb_lwir/manifest.csv" ] || $nmr synth --out "$sets/rig7_bag" --duration 1.0 --seed 7007 \
  --rig-seed 7 --size-scale 0.5 --export-pairs "$sets/rig7" --overwrite > /dev/null
ln -sfn rig7/rgb_lwir "$sets/rig7_lwir"; ln -sfn rig7/rgb_depth "$sets/rig7_depth"
lwir_sets+=(rig7_lwir); depth_sets+=(rig7_depth)

ratio() { $py -c "import json,sys; print(round(json.load(open(sys.argv[1]))['summary']['epe_ratio'], 1))" "$1"; }
for spec in "${models[@]}"; do
  label="${spec%%=*}"; dir="${spec#*=}"
  mkdir -p "$select_dir/$label"
  for pair in rgb_lwir rgb_depth; do
    [ -f "$dir/$pair.onnx" ] || continue
    if [ "$pair" = rgb_lwir ]; then list=("${lwir_sets[@]}"); else list=("${depth_sets[@]}"); fi
    ratios=()
    for set in "${list[@]}"; do
      out="$select_dir/$label/$set.json"
      [ -f "$out" ] || $nmr evaluate --model "$dir/$pair.onnx" --backend onnxruntime \
        --refine-tiles "${NMR_REFINE_TILES:-auto}" --manifest "$sets/$set/manifest.csv" --out "$out" > /dev/null
      ratios+=("$(ratio "$out")")
      echo "$label $pair $set: ${ratios[-1]} %"
    done
    echo "$label $pair mean over ${#ratios[@]} sets: $($py -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(round(sum(v)/len(v), 2))' "${ratios[@]}") %"
    if [ "${NMR_VARIANTS:-0}" = 1 ]; then
      manifests=(); for set in "${list[@]}"; do manifests+=("$sets/$set/manifest.csv"); done
      [ -f "$select_dir/$label/$pair.variants.txt" ] || OMP_NUM_THREADS=1 $py benchmarks/inference_variants.py \
        --model "$dir/$pair.onnx" --manifest "${manifests[@]}" > "$select_dir/$label/$pair.variants.txt"
      cat "$select_dir/$label/$pair.variants.txt"
    fi
  done
done
