"""README command 1: ``diffattn generate`` on the embedded model (dense vs the two-stage recipe vs upscale only),
and ``generate`` on a random-weight family, both timed by the protocol. Small sizes and few steps: the output's
structure and consistency are checked, never a timing."""

from __future__ import annotations

import json

import pytest

from diffattn.cli import main
from diffattn.pipelines.tiny_shapes import pipeline as tm
from diffattn.report.timing import ABOVE_BOUND, FASTER, SLOWER, WITHIN_NOISE

WORDS = (ABOVE_BOUND, WITHIN_NOISE, FASTER, SLOWER)


def _labels_of(line: str) -> list[str]:
    """The protocol's words ending a printed speedup (before the bracketed note), in order; [] if the line does
    not end with them."""
    text = line.split("  [")[0]
    found = [w for w in WORDS if w in text]
    return found if found and text.endswith(": " + "; ".join(found)) else []


@pytest.mark.slow
def test_main_job_small(tmp_path, capsys):
    args = ["generate", "--out", str(tmp_path), "--steps", "2", "--num-images", "6", "--height", "64", "--width", "64"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "target 64px = 16x16 tokens" in out and "3 interleaved rounds" in out
    for label in ("dense", "2-stage gna", "upscale only"):
        assert any(line.startswith(label) for line in out.splitlines()), label
    speedups = [line for line in out.splitlines() if line.startswith(("pipeline speedup", "engine step speedup"))]
    assert len(speedups) == 2
    for line in speedups:  # every speedup beside its bound and in words
        assert "bound" in line and " of it)" in line
        assert _labels_of(line), line
    assert "Amdahl bound" in speedups[1] and "attention-only bound" in speedups[1]
    assert out.count("paired (exact McNemar)") == 3 and "load average" in out
    assert sum(line.startswith("target ") for line in out.splitlines()) == 4
    for name in ("tiny_grid.png", "dense.png", "two_stage.png", "upscale_only.png", "tiny_job.json"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "tiny_job.json").read_text())
    assert result["meta"]["refine_steps"] == 1 and result["meta"]["samples"] == 6
    for key in ("dense", "recipe", "upscale"):
        q = result["quality"]["rows"][key]
        assert q["accuracy"]["correct"] == sum(q["per_sample_correct"]) and q["accuracy"]["samples"] == 6
        lo, hi = q["accuracy"]["wilson95"]
        assert lo <= q["accuracy"]["accuracy"] <= hi
        assert len(result["rows"][key]["time_per_image_s"]["values"]) == 3  # one per round
    engine = result["speed"]["engine_step_speedup"]
    assert len(engine["per_round"]) == 3 and engine["speedup_min"] <= engine["speedup"] <= engine["speedup_max"]
    assert engine["labels"] == _labels_of(speedups[1])
    assert engine["amdahl_bound"] == pytest.approx(result["speed"]["bounds"]["end_to_end_bound"])
    bounds = result["speed"]["bounds"]
    assert bounds["finest_grid"] == [16, 16] and bounds["attention_bound"] > 1  # the refine ran sparse at 64 px
    assert result["load_average"] is None or len(result["load_average"]) == 3


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--rounds", "2"], "argument --rounds: 2 is out of range; accepted: an int in [3, 1000]"),
        (["--num-images", "2"], "--num-images 2 must be >= the 3 timed rounds"),
        (["--height", "32", "--width", "32"], "must be above the training size 32"),
        (["--steps", "1"], "0 refine steps"),
    ],
    ids=["two-rounds", "fewer-images-than-rounds", "training-size", "one-step"],
)
def test_main_job_refuses_bad_input_before_generating(tmp_path, capsys, extra, match):
    assert main(["generate", "--out", str(tmp_path / "out"), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_generate_on_a_random_family_uses_the_protocol(tmp_path, capsys):
    assert main(["generate", "--model", "tiny-pixart-alpha", "--out", str(tmp_path), "--window", "4"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("speedup per step"))
    assert "Amdahl bound" in line and "attention-only bound" in line
    assert _labels_of(line), line
    assert "over 3 runs" in out and "load average" in out
    assert (tmp_path / "dense.png").is_file() and (tmp_path / "gna.png").is_file()
    assert main(["generate", "--model", "tiny-pixart-alpha", "--out", str(tmp_path), "--num-images", "4"]) == 2
    assert "--num-images is an option of the embedded model's job" in capsys.readouterr().err


def test_inspect_on_the_embedded_model_defaults_to_the_job_size(capsys):
    assert main(["inspect"]) == 0
    out = capsys.readouterr().out
    grid = f"{4 * tm.TRAIN_GRID[0]}x{4 * tm.TRAIN_GRID[1]}"
    assert grid in out or f"({4 * tm.TRAIN_GRID[0]}, {4 * tm.TRAIN_GRID[1]})" in out
