#!/usr/bin/env bash
# The node at camera rate (issue 21): every figure of docs/performance.md's "Node" section in one go.
#
#   benchmarks/run_node_rates.sh                      # full run: 3 s bag, 10/30/60 Hz, ~4 minutes
#   DURATION=1 RATES="10 30" benchmarks/run_node_rates.sh /tmp/quick   # a short check that it works
#   BACKEND=torch DEVICE=cuda benchmarks/run_node_rates.sh out_gpu      # on a GPU machine (.pt models)
#   REEXPORT=1 benchmarks/run_node_rates.sh out_reexported   # the models/*.pt exported again with this
#                                  # checkout's exporter (cost volume by rows) into OUT/models, and used
#
# Run it on a QUIET machine (load average near 0: `uptime`), from the repository root, after the
# README's set-up. It makes one full-size synthetic-rig bag and plays it into register_node with the
# shipped models, twice: every output subscribed (with fused), and only registered + flow. Then the
# in-process stage profile and the ONNX Runtime settings. Everything goes to OUT (default
# node_rates_<date>): results.md (the tables to paste), *.json (raw), logs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-node_rates_$(date -u +%Y%m%dT%H%M%SZ)}
DURATION=${DURATION:-3}
RATES=${RATES:-10 30 60}
BACKEND=${BACKEND:-auto}
DEVICE=${DEVICE:-auto}
ROUNDS=${ROUNDS:-30}
PY=${PY:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-$PWD/src}
mkdir -p "$OUT/work"
OUT=$(cd "$OUT" && pwd)
MODELS=()
if [ "${REEXPORT:-0}" = 1 ]; then
  mkdir -p "$OUT/models"
  for pair in rgb_lwir rgb_depth; do
    .venv/bin/nmr export --model "models/$pair.pt" --out "$OUT/models/$pair.onnx" > "$OUT/export_$pair.log" 2>&1
  done
  MODELS=(--model-rgb-lwir "$OUT/models/rgb_lwir.onnx" --model-rgb-depth "$OUT/models/rgb_depth.onnx")
fi
{
  echo "# register_node at camera rate ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
  echo
  echo "Load before: $(uptime)"
  echo "Backend $BACKEND, device $DEVICE, bag ${DURATION} s at full camera size, rates: $RATES${REEXPORT:+, models re-exported (REEXPORT=$REEXPORT)}"
} > "$OUT/results.md"

run_rates() {  # $1 = label, rest = node_latency options
  local label=$1; shift
  echo "== $label" >&2
  "$PY" benchmarks/node_latency.py --duration "$DURATION" --rates $RATES --backend "$BACKEND" --device "$DEVICE" \
    --workdir "$OUT/work" --json "$OUT/$label.json" --markdown "$OUT/$label.md" ${MODELS[@]+"${MODELS[@]}"} "$@" \
    2> "$OUT/$label.log"
  { echo; echo "## $label"; echo; cat "$OUT/$label.md"; } >> "$OUT/results.md"
}

BAG=()
run_rates all_outputs --outputs all
[ -d "$OUT/work/rig" ] && BAG=(--bag "$OUT/work/rig")
run_rates registered_flow --outputs registered flow ${BAG[@]+"${BAG[@]}"}

echo "== stage profile" >&2
PROFILE_DEVICE=$DEVICE; [ "$PROFILE_DEVICE" = auto ] && PROFILE_DEVICE=cpu
PROFILE_BACKEND=$BACKEND; [ "$PROFILE_BACKEND" = auto ] && PROFILE_BACKEND=onnxruntime
"$PY" benchmarks/profile_set.py --rounds "$ROUNDS" --backend "$PROFILE_BACKEND" --device "$PROFILE_DEVICE" ${MODELS[@]+"${MODELS[@]}"} \
  --json "$OUT/profile.json" --markdown "$OUT/profile.md" 2> "$OUT/profile.log"
{ echo; echo "## Stage profile (one full-size set of both pairs)"; echo; cat "$OUT/profile.md"; } >> "$OUT/results.md"
if [ "$PROFILE_DEVICE" = cpu ]; then
  echo "== onnxruntime settings" >&2
  "$PY" benchmarks/ort_settings.py --rounds "$ROUNDS" --json "$OUT/ort_settings.json" > "$OUT/ort_settings.md" \
    2> "$OUT/ort_settings.log"
  { echo; echo "## ONNX Runtime settings"; echo; cat "$OUT/ort_settings.md"; } >> "$OUT/results.md"
fi
{ echo; echo "Load after: $(uptime)"; } >> "$OUT/results.md"
rm -rf "$OUT/work/rig"  # the bag is large (full size); the logs and results stay
cat "$OUT/results.md"
