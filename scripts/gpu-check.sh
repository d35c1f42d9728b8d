#!/usr/bin/env bash
# Every measurement the GPU path owes, in one run on a machine with one CUDA GPU (docs/benchmarks.md, "H200"):
# the speech stages at official sizes per precision (bench-components: batch 1-64, x real time, peak memory),
# batched equals one by one (check-batching), each precision against exact fp32 (check-precision), and an LM
# stand-in's per-token latency with the vocoder busy (check-contention); JSON + PNG under one folder, then a
# summary against the targets. It needs only the GPU image's Python with the packages `prerequisites` names
# (what it lacks travels as wheels), and checks them first. HuBERT and the vocoder run with and without CUDA graphs.
#
#   scripts/gpu-check.sh [--device cuda|cpu] [--quick] [--out DIR]
# --device cpu --quick is the dry run CI takes (under a minute): small sizes, one precision, tiny models.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda QUICK="" OUT=gpu-check
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:?--device needs cuda or cpu}; shift 2 ;;
        --quick) QUICK=--quick; shift ;;
        --out) OUT=${2:?--out needs a folder}; shift 2 ;;
        *) echo "usage: scripts/gpu-check.sh [--device cuda|cpu] [--quick] [--out DIR]" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda | cpu) ;; *) echo "gpu-check: --device must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;; esac
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
"$PYTHON" -m spiritserve.tools.gpu_check prerequisites --device "$DEVICE" || exit 3

mkdir -p "$OUT/logs"
started=$SECONDS
spiritserve() { "$PYTHON" -m spiritserve "$@"; }
# A check that fails (e.g. batched != one by one on CUDA) is recorded and the run goes on.
record() { local name=$1; shift; "$@" > "$OUT/logs/$name.log" 2>&1 || echo "gpu-check: $name failed (exit $?), see $OUT/logs/$name.log"; }

if [ -n "$QUICK" ]; then
    precisions=(float32)
    components=(--quick --components hubert,hifigan,hifigan_stream)
else
    precisions=(float32 tf32 bfloat16)
    components=(--batch-sizes 1,4,16,32,64 --seconds 2.0 --repeats 3)
fi
for precision in "${precisions[@]}"; do
    record "components-$precision" spiritserve bench-components --device "$DEVICE" --precision "$precision" \
        "${components[@]}" --out "$OUT/components-$precision"
done
# HuBERT and the vocoder as served on a GPU: batches padded to fixed shapes, replayed as CUDA graphs (padding only
# on CPU).
record components-float32-graphs spiritserve bench-components --device "$DEVICE" "${components[@]}" \
    --components hubert,hifigan,hifigan_stream --cuda-graphs --out "$OUT/components-float32-graphs"

clips=(tests/fixtures/espeak_16k_mono.flac tests/fixtures/flite_48k_stereo.opus)
[ -n "$QUICK" ] && clips=("${clips[0]}")
spiritserve make-tiny --out "$OUT/tiny-expressive" --variant expressive > /dev/null
record batching spiritserve check-batching "${clips[@]}" --checkpoints "$OUT/tiny-expressive" --device "$DEVICE" \
    --out "$OUT/batching.json"
record precision spiritserve check-precision "${clips[@]}" --checkpoints "$OUT/tiny-expressive" \
    --device "$DEVICE" --precisions tf32,bfloat16 --out "$OUT/precision.json"
record contention spiritserve check-contention --device "$DEVICE" $QUICK --out "$OUT"

"$PYTHON" -m spiritserve.tools.gpu_check summary "$OUT"
echo "gpu-check: done in $((SECONDS - started)) s -> $OUT"
