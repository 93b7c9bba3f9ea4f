"""The Python steps of ``scripts/gpu_check.sh`` (which keeps the orchestration: steps, timeouts, files).

``python -m diffattn.report.bench.gpu_check cuda``: exit status 0 when torch sees a CUDA GPU, else 1.

``python -m diffattn.report.bench.gpu_check bench OUT_DIR``: correctness on sampled rows and timing of the
triton backend on FLUX-4K (256x256 tokens, window 80x80, stride 1 and 16x16) and HunyuanVideo-720p (30x48x80,
window 18x24x24, stride 1 and 16x8x8), 24 heads, head dim 128, bf16, with full autotuning: the max error on
sampled query rows against an exact fp32 reference, and timing rows (triton, dense SDPA, NATTEN if installed),
each with its speedup over dense SDPA and achieved / tile bound (`diffattn.report.bounds.gna_bounds`). Prints
one JSON line per preset and the table; writes ``OUT_DIR/bench.json`` and ``OUT_DIR/bench.md``; exit status 1
when a preset is not correct (or its triton call failed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

from ...methods.gna import GNAConfig, gna_axis_window_starts, gna_plan
from ..bounds import gna_bounds

B, H, D, DTYPE, SAMPLES = 1, 24, 128, torch.bfloat16, 256
PRESETS = [
    ("flux-4k", (256, 256), (80, 80), (1, 1)),
    ("flux-4k", (256, 256), (80, 80), (16, 16)),
    ("hunyuan-720p", (30, 48, 80), (18, 24, 24), (1, 1, 1)),
    ("hunyuan-720p", (30, 48, 80), (18, 24, 24), (16, 8, 8)),
]
NATTEN_BUDGET_S = 120  # NATTEN's flex backend compiles per shape: skip it once the step is this far in
MAX_ERR = 3e-2


def sampled_reference(q, k, v, grid, window, stride, rows):
    """Exact fp32 GNA attention of query rows ``rows`` (dilation 1): per axis, keys inside
    [start(x), start(x) + window) with the method's window starts; the mask is their outer AND."""
    coords = torch.unravel_index(rows, grid)
    mask = None
    for a, (length, w, s) in enumerate(zip(grid, window, stride)):
        start = gna_axis_window_starts(length, w, s).to(rows.device)[coords[a]]
        key = torch.arange(length, device=rows.device)
        m = (key[None, :] >= start[:, None]) & (key[None, :] < start[:, None] + w)  # [S, L_a]
        shape = [len(rows)] + [1] * len(grid)
        shape[1 + a] = length
        m = m.reshape(shape)
        mask = m if mask is None else mask & m
    mask = mask.reshape(len(rows), -1)
    out = torch.empty(len(rows), H, D, device=q.device)
    for h in range(H):
        s = (q[0, rows, h].float() @ k[0, :, h].float().T) * D**-0.5
        p = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
        out[:, h] = p @ v[0, :, h].float()
    return out


def bench(out_dir: Path) -> int:
    """Step 2 of the GPU check (see the module docstring); the exit status."""
    try:
        import natten
    except ImportError:
        natten = None

    rows_out = []
    t_start = time.time()
    for name, grid, window, stride in PRESETS:
        row = bench_preset(name, grid, window, stride, natten, t_start)
        for key in [k for k in row if k.endswith("_ms") and k != "dense_ms"]:
            speedup = row["dense_ms"] / row[key]
            row[key.replace("_ms", "_speedup")] = speedup
            row[key.replace("_ms", "_over_tile_bound")] = speedup / row["tile_bound"]
        print(f"{name} stride {'x'.join(map(str, stride))}", json.dumps(row), flush=True)
        rows_out.append(row)
        torch.cuda.empty_cache()

    (out_dir / "bench.json").write_text(json.dumps(rows_out, indent=1))
    lines = bench_markdown(rows_out)
    (out_dir / "bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r for r in rows_out if not r.get("correct", False)]
    return 1 if bad else 0


def bench_preset(
    name: str, grid: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...], natten, t_start: float
) -> dict:
    """One preset's row: the triton backend's sampled error and milliseconds (or its error), dense SDPA's, and
    NATTEN's backends' when ``natten`` (the module, or None) is given and the step, started at ``t_start``
    (`time.time`), is not yet `NATTEN_BUDGET_S` in."""
    import torch.nn.functional as F
    from triton.testing import do_bench

    from ...kernels import triton_bsa as tb

    n = math.prod(grid)
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(B, n, H, D, device="cuda", dtype=DTYPE, generator=g) for _ in range(3))
    win, st, dil = GNAConfig(window=window, stride=stride, dilation=(1,) * len(grid)).resolve(grid)
    plan = gna_plan(grid, win, st, dil)
    bounds = gna_bounds(grid, window, stride)
    row = {"preset": name, "grid": grid, "window": window, "stride": stride, "heads": H, "head_dim": D,
           "dtype": "bf16", "tile_bound": bounds.tile_bound, "token_bound": bounds.token_bound}  # fmt: skip
    try:
        out, _ = tb.block_sparse_attention_triton(q, k, v, plan)  # first call autotunes
        torch.cuda.synchronize()
        rows = torch.randint(0, n, (SAMPLES,), device="cuda", generator=g)
        ref = sampled_reference(q, k, v, grid, win, st, rows)
        err = (out[0, rows].float() - ref).abs().max().item()
        row["max_abs_err_sampled"] = err
        row["correct"] = err < MAX_ERR
        row["triton_ms"] = do_bench(lambda: tb.block_sparse_attention_triton(q, k, v, plan), warmup=50, rep=300)
    except Exception:
        row["triton_error"] = traceback.format_exc()[-2000:]
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    row["dense_ms"] = do_bench(lambda: F.scaled_dot_product_attention(qt, kt, vt), warmup=25, rep=200)
    if natten is not None and time.time() - t_start > NATTEN_BUDGET_S:
        row["natten_skipped"] = f"time budget ({NATTEN_BUDGET_S} s) spent"
    elif natten is not None:
        fn = {2: natten.na2d, 3: natten.na3d}[len(grid)]
        shaped = [t.view(B, *grid, H, D) for t in (q, k, v)]
        for backend, kw in ((None, {}), ("flex-fna", {"torch_compile": True})):
            key = f"natten_{backend or 'auto'}"
            try:
                call = lambda: fn(*shaped, kernel_size=win, stride=st, dilation=dil, backend=backend, **kw)  # noqa: B023
                call()
                row[key + "_ms"] = do_bench(call, warmup=25, rep=200)
            except Exception as e:  # NATTEN without its CUDA library has no fused backend
                row[key + "_error"] = f"{type(e).__name__}: {e}"[:300]
    return row


def bench_markdown(rows: list[dict]) -> list[str]:
    """The table of `bench`'s rows: one line per timed method (triton, NATTEN backends) and preset."""
    lines = ["| preset | stride | tile bound | dense ms | method | ms | speedup | achieved / tile bound "
             "| max err (sampled) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        for key in [k for k in r if k.endswith("_ms") and k != "dense_ms"]:
            m = key[: -len("_ms")]
            err = f"{r['max_abs_err_sampled']:.1e}" if m == "triton" and "max_abs_err_sampled" in r else ""
            lines.append(f"| {r['preset']} | {'x'.join(map(str, r['stride']))} | {r['tile_bound']:.2f} "
                         f"| {r['dense_ms']:.2f} | {m} | {r[key]:.2f} | {r[m + '_speedup']:.2f} "
                         f"| {r[m + '_over_tile_bound']:.2f} | {err} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffattn.report.bench.gpu_check", description=__doc__.split("\n")[0])
    steps = p.add_subparsers(dest="step", required=True)
    steps.add_parser("cuda", help="exit status 0 when torch sees a CUDA GPU, else 1")
    b = steps.add_parser("bench", help="correctness and timing of the triton backend at real sizes")
    b.add_argument("out_dir", type=Path, help="writes bench.json and bench.md here")
    args = p.parse_args(argv)
    if args.step == "cuda":
        return 0 if torch.cuda.is_available() else 1
    return bench(args.out_dir)


if __name__ == "__main__":
    sys.exit(main())
