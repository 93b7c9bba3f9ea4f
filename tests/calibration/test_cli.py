"""``diffattn calibrate`` writes a plan file that ``diffattn inspect --plan`` shows and ``apply_attention`` takes;
bad targets and missing plan files fail with a clear error before any model is loaded."""

import pytest

from diffattn.calibration import Plan
from diffattn.cli import main


def test_calibrate_then_inspect(tmp_path, capsys):
    out = tmp_path / "plan.json"
    out.write_text("an older plan")  # an existing plan file is overwritten, not taken for a folder
    argv = ["calibrate", "--model", "tiny-flux", "--target", "max_attn_error=2", "--out", str(out), "--no-verify"]
    assert main([*argv, "--no-progress", "--step-buckets", "1"]) == 0
    printed = capsys.readouterr()
    plan = Plan.load(out)
    assert plan.sparse_modules and plan.model[0].cls == "FluxTransformer2DModel"
    assert "diffattn plan for FluxTransformer2DModel" in printed.out and f"wrote {out}" in printed.err
    assert main(["inspect", "--model", "tiny-flux", "--plan", str(out)]) == 0
    table = capsys.readouterr().out
    assert "plan: gna stride=1 window=" in table and "diffattn plan for FluxTransformer2DModel" in table
    assert main(["inspect", "--model", "tiny-sd", "--plan", str(out)]) == 2  # another model: refused
    assert "calibrated for FluxTransformer2DModel" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["calibrate", "--target", "max_attn_error=abc"], "target max_attn_error='abc' is not a number"),
        (["calibrate", "--target", "min_mass=2"], "min_mass=2.0 must be in (0, 1]"),
        (["inspect", "--model", "tiny-sd", "--plan", "/nonexistent/plan.json"], "does not exist"),
        (
            ["calibrate", "--step-buckets", "0"],
            "argument --step-buckets: 0 is out of range; accepted: an int in [1, 1000]",
        ),
        (["calibrate", "--queries", "1e3"], "argument --queries: '1e3' is not an int"),
        (["calibrate", "--budget-s", "nan"], "argument --budget-s: nan is out of range"),
        (["calibrate", "--out", "{tmp}"], "is a folder; give the plan file to write"),
        (["calibrate", "--out", "{tmp}/a_file/plan.json"], "a_file' is a file, not a folder"),
    ],
    ids=[
        "not-a-number",
        "out-of-range",
        "missing-plan",
        "zero-buckets",
        "float-queries",
        "nan-budget",
        "out-folder",
        "out-under-a-file",
    ],
)
def test_bad_input_is_a_clear_error(capsys, tmp_path, argv, message):
    (tmp_path / "a_file").write_text("")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert message in capsys.readouterr().err
