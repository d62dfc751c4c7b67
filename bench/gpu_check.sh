#!/usr/bin/env bash
# Every GPU-side check in one device call (see bench/README.md "GPU"): the gpu-marked tests, the
# shared plain-transformers baseline and our scoring benches, all on the same card. Figures land in $OUT.
# Prerequisites on the device machine: the SmolLM2 GGUF reassembled at $GGUF (two carried parts, see
# ../shared/notes/models-and-data.md) and `gguf` importable (PYTHONPATH=/tmp/site).
# Usage there: GGUF=/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
GGUF="${GGUF:-/tmp/m/SmolLM2-135M-Instruct.Q4_1.gguf}"
status=0
run() { echo "== $*"; "$@" 2>&1 | tee -a "$OUT/gpu_check.log"; local rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || status=$rc; }

nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/card.txt"
run python -m pytest -q -m gpu tests/model/test_scoring.py
run python bench/hf_baseline_gpu.py
run python bench/bench_scoring.py --smollm2 --gguf "$GGUF"
run python bench/bench_scoring.py --gpu
exit $status
