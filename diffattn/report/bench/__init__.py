"""Benchmark drivers over the report library (`diffattn.report`: timing, bounds, targets, runner). Nothing in
``diffattn.report`` outside this package imports it; the command lines in ``scripts/`` each parse their
arguments and make one call here.

- `kernel`: attention kernels vs dense SDPA (and NATTEN's CPU path) beside their bounds (``scripts/speedup.py``);
- `engine`: the CPU engine vs dense SDPA, quiet and busy, before and after (``scripts/bench_engine.py``);
- `e2e`: denoiser steps, dense vs each method, beside the Amdahl bound (``scripts/speedup.py --e2e``);
- `freeswim`: FreeSwim's whole pipeline vs dense at 4x the training tokens (``scripts/bench_freeswim.py``);
- `compile_report`: the Triton kernel's compile-time resources for sm80/sm90 (``scripts/triton_report.py``);
- `gpu_check`: the Python steps of ``scripts/gpu_check.sh`` (``python -m diffattn.report.bench.gpu_check``);
- `workloads`: the real-width denoisers the drivers time, built once; `common`: logging and result files.
"""
