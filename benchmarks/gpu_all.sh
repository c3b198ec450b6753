#!/usr/bin/env bash
# Every GPU row of the network benchmarks, in one command, for the first minutes a GPU is lent:
#
#   bash benchmarks/gpu_all.sh            # or PYTHON=.venv/bin/python bash benchmarks/gpu_all.sh
#
# 1. the device noise of RESTORE-DiT against the CPU's, bit for bit (tests/test_rng_torch.py, its CUDA test);
# 2. AnytimeFormer: fp32 / bf16 / fp16 rows (pixels/s, fraction of the fp32 matmul rate and of the row's
#    own dtype, errors against the official outputs or fp32 and against fp32), then fill vs bare on a GPU;
# 3. RESTORE-DiT at the authors' size: fp32 / bf16 / fp16 rows with 1 and 4 DPM-Solver++ steps (the same
#    columns), then fill vs bare sampling of the same tiles on a GPU.
# Each step has a time limit (the whole script stays under 5 minutes on a current GPU; a step that runs
# out prints what it has and the script goes on). Run it from anywhere; it runs in the project root.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_all.sh: torch.cuda.is_available() is False; nothing to measure" >&2
    exit 1
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
status=0
echo "== 1. device noise == CPU noise (tests/test_rng_torch.py)"
timeout 60 "$PY" -m pytest -q -p no:cacheprovider tests/test_rng_torch.py || status=1
echo "== 2. AnytimeFormer on the GPU"
timeout 100 "$PY" benchmarks/anytimeformer_throughput.py --device cuda --repeat 3 || status=1
echo "== 3. RESTORE-DiT on the GPU"
timeout 130 "$PY" benchmarks/restore_dit_throughput.py --device cuda --repeat 3 || status=1
exit $status
