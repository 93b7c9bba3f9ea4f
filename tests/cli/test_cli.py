"""The command line: generate writes outputs and prints dense vs accelerated time."""

from __future__ import annotations

import pytest
import torch

from diffattn.cli import main


@pytest.mark.slow
@pytest.mark.parametrize(
    "model,extra,suffix",
    [
        ("tiny-sd", ["--height", "64", "--width", "64", "--window", "8"], ".png"),
        ("tiny-wan", ["--window", "2,4,4"], ".gif"),
    ],
    ids=["image", "video"],
)
def test_generate_writes_outputs_and_timings(tmp_path, capsys, model, extra, suffix):
    assert main(["generate", "--model", model, "--out", str(tmp_path), *extra]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / f"dense{suffix}").stat().st_size > 0
    assert (tmp_path / f"gna{suffix}").stat().st_size > 0
    assert "speedup" in out and "0 dense-fallback" in out


@pytest.mark.parametrize(
    "method,knobs", [("msw", []), ("proxy", ["--knob", "window=4", "--knob", "shift=true"]), ("agent", [])]
)
def test_generate_other_methods(tmp_path, capsys, method, knobs):
    argv = ["generate", "--model", "tiny-sd", "--method", method, *knobs, "--height", "64", "--width", "64"]
    argv.append("--no-dense")
    assert main([*argv, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / f"{method}.png").stat().st_size > 0
    assert "0 dense-fallback" in out and " 0 sparse" not in out


def test_generate_bad_knob_exits_with_clear_error(tmp_path, capsys):
    argv = ["generate", "--model", "tiny-sd", "--method", "proxy", "--knob", "proxy=median", "--no-dense"]
    argv += ["--out", str(tmp_path)]
    assert main([*argv, "--height", "32", "--width", "32"]) == 2
    assert "proxy='median' is not one of" in capsys.readouterr().err


def test_generate_bad_window_exits_with_clear_error(tmp_path, capsys):
    assert (
        main(["generate", "--model", "tiny-sd", "--height", "32", "--width", "32", "--window", "0", "--no-dense",
              "--out", str(tmp_path)])
        == 2
    )
    assert "window=0 must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--window", "0"], "window=0 must be >= 1"),
        (["--method", "gna", "--knob", "window=4", "--knob", "stride=5"], "stride=5 exceeds window=4"),
        (["--method", "nope"], "unknown attention method 'nope'"),
        (["--method", "msw", "--knob", "windw=4"], "unknown knob(s) ['windw'] for method 'msw'"),
        (["--method", "proxy", "--knob", "proxy=median"], "proxy='median' is not one of"),
    ],
    ids=["gna-window-0", "gna-stride-over-window", "unknown-method", "unknown-knob", "bad-knob-value"],
)
def test_generate_validates_before_any_generation(tmp_path, capsys, monkeypatch, argv, message):
    from diffattn.pipelines.tiny_shapes.pipeline import TinyShapesPipeline

    runs = []
    fail = lambda *a, **k: runs.append(a) or pytest.fail("a generation ran")  # noqa: E731
    monkeypatch.setattr(TinyShapesPipeline, "__call__", fail)
    assert main(["generate", "--height", "32", "--width", "32", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert runs == [] and not list(tmp_path.iterdir())  # not even the dense run


def test_list_commands(capsys):
    assert main(["methods"]) == 0
    assert capsys.readouterr().out.split() == ["agent", "dense", "freeswim", "gna", "msw", "proxy"]
    assert main(["models"]) == 0
    assert "UNet2DConditionModel" in capsys.readouterr().out


def test_unloadable_model_names_the_offline_choices(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one of the offline models: tiny-sd" in err[0]
    assert not (tmp_path / "out").exists()


def _rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("module")) + 1
    return [line.split() for line in lines[start:] if line.strip() and not line.startswith(("WARNING", "dry run"))]


def test_inspect_prints_the_grid_at_the_requested_size(capsys):
    """UNet levels at 64x96 px (tiny VAE factor 2: latent 32x48, then 16x24), one denoiser call each."""
    assert main(["inspect", "--model", "tiny-sd", "--height", "64", "--width", "96", "--window", "4"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert rows and {r[3] for r in rows} == {"32x48", "16x24"}, rows
    assert all(r[1] == "sd" and r[2] == "self" and r[4:6] == ["0", "0"] and r[6] == "gna" for r in rows), rows
    assert all(r[8:11] == ["1", "0", "0"] for r in rows), rows  # one sparse call each, no fallback


def test_inspect_joint_text_and_dry_run_leaves_pipeline_as_it_was(pipelines):
    from diffattn.patch.dry_run import dry_run
    from diffattn.tiny import tiny_call_kwargs, tiny_output

    pipe = pipelines.pipe("tiny-flux")
    before = tiny_output(pipe, "tiny-flux")
    table = dry_run(pipe, tiny_call_kwargs("tiny-flux"), "gna", window=3)
    rows = _rows(table)
    assert rows and all(r[1:6] == ["flux", "joint", "8x12", "16", "0"] for r in rows), table
    assert all(r[8:11] == ["1", "0", "0"] for r in rows), table
    assert torch.equal(tiny_output(pipe, "tiny-flux"), before)
    with pytest.raises(ValueError, match="window"):  # bad knobs fail before any call, nothing left installed
        dry_run(pipe, tiny_call_kwargs("tiny-flux"), "gna", window=0)
    assert torch.equal(tiny_output(pipe, "tiny-flux"), before)


def test_temporal_window_on_an_image_model_is_a_clear_error(capsys):
    argv = ["inspect", "--model", "tiny-sd", "--window", "4", "--temporal-window", "2"]
    assert main(argv) == 2  # an image UNet has no temporal attention: nothing is generated
    assert "has no temporal attention" in capsys.readouterr().err
