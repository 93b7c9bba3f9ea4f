"""Calibration on the offline tiny pipelines (random weights: nothing to find, but everything must run): SD, FLUX,
Wan and a UNet video model (a bare UNetMotionModel) give a valid plan, which applies through the one atomic handle,
runs sparse, and removes bit-exactly; a plan refuses another model; a target nothing meets keeps every module dense
and says so; the budget stops early and says so; verify writes compare's report."""

import dataclasses
import json

import pytest
import torch

import diffattn
from diffattn.calibration import CalibrationTarget, Plan, calibrate
from diffattn.calibration.run import measure, plan_from
from diffattn.tiny import build_tiny_pipeline, tiny_call_kwargs, tiny_output
from diffattn.tiny.denoisers import build_tiny_model, tiny_forward

EASY = "max_attn_error=2.0"  # every candidate qualifies: the cheapest is chosen


def _calibrate(pipe, name, **kw):
    call = tiny_call_kwargs(name)
    prompt = call.pop("prompt")
    return calibrate(pipe, [prompt], call_kwargs=call, progress=False, **{"target": EASY, **kw})


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-flux", "tiny-wan"])
def test_calibrates_applies_and_removes_bit_exactly(pipelines, name):
    pipe, dense = pipelines.pipe(name), pipelines.output(name)
    plan = _calibrate(pipe, name, step_buckets=2)
    assert plan.sparse_modules and plan.satisfied and plan.end_to_end_bound > 1
    assert len(plan.buckets) == 2  # the tiny pipelines run two steps
    assert Plan.from_json(plan.to_json()) == plan
    handle = diffattn.apply_attention(pipe, plan)
    try:
        out = tiny_output(pipe, name)
        assert handle.sparse_calls > 0 and handle.fallback_calls == 0
        assert set(handle.modules) == set(plan.sparse_modules)
        table = handle.summary()
        assert "plan: gna" in table and "diffattn plan for" in table
    finally:
        handle.remove()
    assert not torch.equal(out, dense)
    assert torch.equal(tiny_output(pipe, name), dense)


def test_a_bare_unet_video_model():
    model, inputs = build_tiny_model("UNetMotionModel")
    before = tiny_forward(model, inputs)
    plan = calibrate(model, [inputs], target=EASY, progress=False)
    assert plan.sparse_modules and len(plan.buckets) == 1
    assert all(len(plan.entry(m, 0).grid) == 2 for m in plan.modules)  # spatial attention: per frame
    with diffattn.attention(model, plan) as handle:
        out = tiny_forward(model, inputs)
        assert handle.sparse_calls > 0
    assert not torch.equal(out, before)
    assert torch.equal(tiny_forward(model, inputs), before)


def test_a_plan_refuses_another_model(pipelines, tmp_path):
    plan = _calibrate(pipelines.pipe("tiny-sd"), "tiny-sd")
    with pytest.raises(ValueError, match=r"calibrated for UNet2DConditionModel at 'unet' .* FluxPipeline holds "
                                         r"FluxTransformer2DModel at 'transformer'"):  # fmt: skip
        diffattn.apply_attention(pipelines.pipe("tiny-flux"), plan)
    other = build_tiny_pipeline("tiny-sd", seed=0)
    other.unet.register_to_config(cross_attention_dim=999)  # same class, another config
    with pytest.raises(ValueError, match=r"a plan only applies to the model it was measured on"):
        diffattn.apply_attention(other, plan)
    path = plan.save(tmp_path / "plan.json")
    with pytest.raises(ValueError, match=r"calibrated for UNet2DConditionModel"):
        diffattn.apply_attention(pipelines.pipe("tiny-flux"), str(path))


def test_apply_by_path_config_and_bad_arguments(pipelines, tmp_path):
    pipe = pipelines.pipe("tiny-sd")
    plan = _calibrate(pipe, "tiny-sd")
    path = plan.save(tmp_path / "plan.json")
    for how in ({"method": str(path)}, {"method": path}, {"config": plan}, {"method": "plan", "config": plan}):
        with diffattn.attention(pipe, **how) as handle:
            assert handle.config == plan
    with pytest.raises(TypeError, match=r"a plan sets its own methods, knobs, modules and steps: drop \['layers'\]"):
        diffattn.apply_attention(pipe, plan, layers="attn1")
    with pytest.raises(TypeError, match=r"config=<Plan> sets every method itself; got method='gna'"):
        diffattn.apply_attention(pipe, "gna", config=plan)
    with pytest.raises(FileNotFoundError, match=r"plan file .*missing.json' does not exist"):
        diffattn.apply_attention(pipe, str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match=r"not a diffattn plan: expected format 'diffattn.plan/1'"):
        diffattn.apply_attention(pipe, str(tmp_path / "bad.json"))


def test_a_target_nothing_meets_keeps_every_module_dense_and_says_so(pipelines, caplog):
    pipe = pipelines.pipe("tiny-sd")
    plan = _calibrate(pipe, "tiny-sd", target=CalibrationTarget(max_attn_error=1e-9))
    assert plan.modules and not plan.sparse_modules
    assert all(e.method == "dense" for e in plan.entries)
    assert any("no candidate met the target (max_attn_error=1e-09" in n for n in plan.notes)
    assert plan.end_to_end_bound == 1.0
    assert "calibration kept every module dense" in caplog.text
    with pytest.raises(ValueError, match=r"keeps every module dense \(nothing to apply\): .*no candidate met"):
        diffattn.apply_attention(pipe, plan)


def test_a_plan_that_missed_its_target_applies_with_a_warning(pipelines):
    pipe = pipelines.pipe("tiny-sd")
    plan = dataclasses.replace(_calibrate(pipe, "tiny-sd"), satisfied=False, notes=("min_bound=9 is out of reach",))
    with pytest.warns(UserWarning, match=r"applying a plan that did not meet its target .*min_bound=9 is out of reach"):
        handle = diffattn.apply_attention(pipe, plan)
    handle.remove()


def test_budget_stops_early_and_says_so(pipelines):
    pipe = pipelines.pipe("tiny-flux")
    call = tiny_call_kwargs("tiny-flux")
    prompt = call.pop("prompt")
    plan = calibrate(pipe, [prompt, prompt + " again"], call_kwargs=call, target=EASY, budget_s=1e-6, progress=False)
    assert any("budget_s=1e-06 ran out after 0 of 2 input(s)" in n for n in plan.notes)
    assert dict(plan.info)["calls_measured"] == 1  # the first measured call is over budget
    assert Plan.from_json(plan.to_json()) == plan


def test_speed_and_psnr_targets(pipelines):
    pipe = pipelines.pipe("tiny-flux")
    call = tiny_call_kwargs("tiny-flux")
    prompt = call.pop("prompt")
    m = measure(pipe, [prompt], call_kwargs=call, progress=False)  # one dense run, several targets
    reachable = plan_from(m, EASY)[0].end_to_end_bound  # every module at its cheapest window
    assert reachable > 1
    goal = 1 + (reachable - 1) / 2
    fast = plan_from(m, f"min_bound={goal}")[0]
    assert fast.satisfied and goal <= fast.end_to_end_bound <= reachable
    impossible = plan_from(m, f"min_bound={reachable * 1.01}")[0]
    assert not impossible.satisfied and any("is out of reach" in n for n in impossible.notes)
    assert impossible.end_to_end_bound == pytest.approx(reachable)  # the fastest plan, flagged
    psnr = plan_from(m, "min_psnr=25")[0]
    assert any(n.startswith("PSNR search") for n in psnr.notes)
    assert dict(psnr.target)["min_psnr"] == 25.0


def test_verify_writes_the_report(pipelines, tmp_path):
    pipe = pipelines.pipe("tiny-flux")
    plan = _calibrate(pipe, "tiny-flux", verify=True, report_dir=tmp_path / "report")
    for name in ("report.json", "report.md", "speedup_quality.png", "grid.png"):
        assert (tmp_path / "report" / name).is_file()
    rows = json.loads((tmp_path / "report" / "report.json").read_text())["configs"]
    assert [r["config"] for r in rows][:2] == ["dense (unpatched)", "calibrated plan"]
    assert rows[2]["config"].startswith("gna stride=1 window=")
    info = dict(plan.info)
    assert info["uniform"] == rows[2]["config"] and "plan_psnr_db" in info
    assert any(n.startswith("verified on 1 held-out prompt(s)") for n in plan.notes)


def test_bad_arguments_fail_before_anything_runs(pipelines):
    pipe = pipelines.pipe("tiny-sd")
    for kw, err, msg in [
        ({"target": {}}, ValueError, r"needs at least one of max_attn_error"),
        ({"target": "max_attn_error=0"}, ValueError, r"max_attn_error=0.0 must be in \(0, 2\]"),
        ({"target": "min_mass=1.5"}, ValueError, r"min_mass=1.5 must be in \(0, 1\]"),
        ({"target": "min_bound=1"}, ValueError, r"min_bound=1.0 must be > 1"),
        ({"target": "speed=2"}, ValueError, r"target item 'speed=2' is not NAME=VALUE"),
        ({"target": {"min_mass": True}}, TypeError, r"min_mass=True must be a number"),
        ({"target": "bound=gpu,min_bound=2"}, ValueError, r"bound='gpu' must be one of \('flop', 'tile'\)"),
        ({"methods": ("agent",)}, ValueError, r"calibration chooses among \('gna', 'msw', 'proxy'\)"),
        ({"step_buckets": 0}, ValueError, r"step_buckets=0 must be an int >= 1"),
        ({"budget_s": -1}, ValueError, r"budget_s=-1 must be a number of seconds > 0"),
        ({"queries": 0}, ValueError, r"queries=0 must be an int >= 1"),
    ]:
        with pytest.raises(err, match=msg):
            calibrate(pipe, ["a"], progress=False, **kw)
    model, inputs = build_tiny_model("UNet2DConditionModel")
    with pytest.raises(ValueError, match=r"a bare denoiser needs inputs=\[\{forward keyword arguments\}"):
        calibrate(model, ["a prompt"])
    with pytest.raises(ValueError, match=r"min_psnr and verify need a pipeline"):
        calibrate(model, [inputs], verify=True)
