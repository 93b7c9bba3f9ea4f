#!/usr/bin/env bash
# GPU check of the Triton block-sparse kernel, for a CUDA machine (under 8 minutes: each step has a hard timeout).
#
#   scripts/gpu_check.sh [OUT_DIR]        (default gpu_check_out/<UTC time>; PYTHON=... to pick python)
#
# 1. tests/kernels/test_triton.py on the real GPU (TRITON_INTERPRET=0: the tests put tensors on CUDA), one
#    autotune config per launch (DIFFATTN_TRITON_QUICK_TUNE=1) so that ~40 kernel variants compile in time;
# 2. on FLUX-4K (256x256 tokens, window 80x80, stride 1 and 16x16) and HunyuanVideo-720p (30x48x80,
#    window 18x24x24, stride 1 and 16x8x8), 24 heads, head dim 128, bf16, with full autotuning:
#    correctness of the triton backend on sampled query rows against an exact fp32 reference, and
#    timing rows (triton, dense SDPA, NATTEN if installed), each with achieved speedup over dense SDPA
#    and achieved / tile bound (bounds from diffattn/report/bounds.py); the Python of this step and of the
#    CUDA check is diffattn/report/bench/gpu_check.py;
# 3. the compile report;
# 4. the end-to-end rows at full scale: `scripts/speedup.py --e2e --device cuda` (FLUX-like 2048², SDXL UNet
#    2048², Wan-like 480p: dense vs gna/msw/proxy/agent per denoiser step beside the Amdahl bound, and the
#    attention-only memory rows at 16,384 and 65,536 tokens), with one autotune config per launch; it gets
#    whatever is left of the 8 minutes (at least 60 s).
# Everything lands in OUT_DIR: pytest.log, bench.log, bench.json, bench.md, report.md (compile report),
# e2e.log, e2e/e2e.json, e2e/e2e.md.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT_DIR="${1:-gpu_check_out/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT_DIR"
export TRITON_INTERPRET=0 TRITON_DEFAULT_FP_FUSION=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0

"$PY" -m diffattn.report.bench.gpu_check cuda || { echo "no CUDA GPU visible to torch: nothing to check" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT_DIR/gpu.txt" 2>&1 || true

echo "== 1/4 tests/kernels/test_triton.py on the GPU"
# (the two CUBIN-compile tests need no GPU and run in CI; step 3 covers them here)
DIFFATTN_TRITON_QUICK_TUNE=1 timeout 190 "$PY" -m pytest tests/kernels/test_triton.py -q -x -p no:cacheprovider \
    -k "not compiles_for_real_gpus and not compile_report" > "$OUT_DIR/pytest.log" 2>&1 || status=1
tail -3 "$OUT_DIR/pytest.log"

echo "== 2/4 real sizes: correctness and timing"
timeout 180 "$PY" -m diffattn.report.bench.gpu_check bench "$OUT_DIR" > "$OUT_DIR/bench.log" 2>&1 || status=1
tail -8 "$OUT_DIR/bench.log"

echo "== 3/4 compile report (registers, spills, shared memory, K/V buffers)"
timeout 50 "$PY" scripts/triton_report.py --quick > "$OUT_DIR/report.md" 2>&1 || status=1
tail -12 "$OUT_DIR/report.md"

E2E_S=$(( 470 - SECONDS )); (( E2E_S < 60 )) && E2E_S=60
echo "== 4/4 end-to-end denoiser steps at full scale (${E2E_S} s)"
DIFFATTN_TRITON_QUICK_TUNE=1 timeout "$E2E_S" "$PY" scripts/speedup.py --e2e --device cuda --dtype bf16 --repeats 3 \
    --out "$OUT_DIR/e2e" > "$OUT_DIR/e2e.log" 2>&1 || status=1
grep -E "^\[e2e\]|^- (PASS|MISS)|^From " "$OUT_DIR/e2e.log" | tail -24
echo "results in $OUT_DIR (status $status)"
exit $status
