"""The benchmark drivers in `diffattn.report.bench` that need a GPU or a real-width model to run whole: their
CPU-checkable parts (the GPU check's exact reference and table, the FreeSwim report, the CLIs' --help). No timing
is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffattn.methods.gna import gna_mask
from diffattn.report.bench import freeswim, gpu_check

from ..helpers import run_script

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("grid, window, stride", [((9, 11), (3, 5), (2, 3)), ((3, 6, 5), (2, 3, 3), (1, 3, 1))])
def test_gpu_check_reference_is_gna(grid, window, stride) -> None:
    n = torch.Size(grid).numel()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, gpu_check.H, gpu_check.D, generator=gen) for _ in range(3))
    rows = torch.tensor([0, 7, n // 2, n - 1])
    ref = gpu_check.sampled_reference(q, k, v, grid, window, stride, rows)
    mask = gna_mask(grid, window, stride, (1,) * len(grid)).reshape(n, n)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    full = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask).transpose(1, 2)
    torch.testing.assert_close(ref, full[0, rows], atol=1e-5, rtol=1e-5)


def test_gpu_check_table_and_cuda_step() -> None:
    row = {"preset": "flux-4k", "stride": (16, 16), "tile_bound": 10.24, "dense_ms": 3.0, "triton_ms": 0.5,
           "triton_speedup": 6.0, "triton_over_tile_bound": 6.0 / 10.24, "max_abs_err_sampled": 4e-3,
           "natten_auto_error": "no fused backend"}  # fmt: skip
    lines = gpu_check.bench_markdown([row])
    assert lines[2] == "| flux-4k | 16x16 | 10.24 | 3.00 | triton | 0.50 | 6.00 | 0.59 | 4.0e-03 |"
    assert len(lines) == 3  # a failed NATTEN backend has no timing row
    assert gpu_check.main(["cuda"]) == (0 if torch.cuda.is_available() else 1)


def test_freeswim_report_states_the_verdict() -> None:
    bound = freeswim.step_bounds((60, 104), freeswim.TEXT_TOKENS, 1, 2)
    video = freeswim.step_bounds((60, 104), 512, 1, 2, frames=21)
    row = {"grid": (60, 104), "tokens_ratio": 4.0, "steps": 4, "cache_steps": 2, "layers": 1, "dtype": "bf16",
           "dense_s": [2.0, 2.2], "freeswim_s": [2.1], "speedup": 2.0 / 2.1, **bound, "cross_calls": 6,
           "cross_cached": 2, "fallback_calls": 0}  # fmt: skip
    row["achieved_of_flop_bound"] = row["speedup"] / bound["flop_bound"]
    row["achieved_of_tile_bound"] = row["speedup"] / bound["tile_bound"]
    row["speedup_spread"], row["labels"] = [0.91, 1.05], ["within noise"]
    md = freeswim.report_markdown(row, video, {"date": "today"})
    assert "0.95x [0.91-1.05]" in md and "in words: within noise" in md
    verdict = "PASS" if row["achieved_of_flop_bound"] >= freeswim.GOAL else "MISS"
    assert f"\n{verdict}: measured speedup is {row['achieved_of_flop_bound']:.2f} of the FLOP bound" in md
    assert "| 60x104 | 4.00 | 4 | 2 | 2.00 | 2.10 |" in md and f"{video['flop_bound']:.2f}x." in md


SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))


def test_no_script_edits_sys_path() -> None:
    """Scripts import the installed package (``pip install -e .``), never a path of their own."""
    assert SCRIPTS and [s for s in SCRIPTS if "sys.path" in (REPO / "scripts" / s).read_text()] == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_their_arguments(script: str, monkeypatch) -> None:
    """Each script is argument parsing plus one call: its --help works with only the package importable."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton_report refuses the interpreter
    code, out, err = run_script(script, "--help")
    assert code == 0, err[-2000:]
    assert out.startswith(f"usage: {script}")
