"""`diffattn.report.compare` and the ``compare`` / ``eval`` commands on a tiny random pipeline."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from diffattn.cli import main
from diffattn.methods import list_methods
from diffattn.report import compare
from diffattn.report.compare import REFERENCE
from diffattn.report.quality import PSNR_CAP_DB
from diffattn.report.runner import RunConfig
from diffattn.report.timing import ABOVE_BOUND, FASTER, SLOWER, WITHIN_NOISE
from diffattn.tiny import build_tiny_pipeline, tiny_call_kwargs

MODEL = "tiny-pixart-alpha"  # the cheapest tiny pipeline: 8x8 image tokens
# the rest use their presets (freeswim's would cover the whole 8x8 grid)
KNOBS = {"gna": "window=4 stride=4", "proxy": "window=4", "freeswim": "train_grid=3"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORDS = (ABOVE_BOUND, WITHIN_NOISE, FASTER, SLOWER)


def _pipe():
    pipe = build_tiny_pipeline(MODEL)
    pipe.set_progress_bar_config(disable=True)
    kw = {k: v for k, v in tiny_call_kwargs(MODEL).items() if k not in ("prompt", "generator")}
    return pipe, kw


def _processors(pipe) -> dict[str, object]:
    return {n: m.processor for n, m in pipe.transformer.named_modules() if hasattr(m, "processor")}


class TinyFeatures(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)[:, :2]


@pytest.mark.slow
def test_compare_every_method(tmp_path: Path):
    pipe, kw = _pipe()
    before = _processors(pipe)
    configs = [RunConfig.parse(f"{m} {KNOBS.get(m, '')}") for m in list_methods()]
    scorer = lambda images, prompts: images.mean((1, 2, 3)) > 0.0  # noqa: E731
    report = compare(
        pipe, configs, ["a red fox", "two cats"], [3, 4], call_kwargs=kw, out_dir=tmp_path, warmup=False,
        progress=False, scorer=scorer, feature_extractor=TinyFeatures(),
    )
    assert _processors(pipe) == before  # unpatched afterwards
    data = json.loads((tmp_path / "report.json").read_text())
    rows = data["configs"]
    assert [r["config"] for r in rows] == [REFERENCE] + [c.label for c in configs]
    assert data["meta"]["seeds"] == [3, 4] and data["meta"]["psnr_cap_db"] == PSNR_CAP_DB
    for r in rows:
        for key in ("step_min_s", "step_median_s", "total_s", "speedup_step_median", "attention_share", "psnr_db"):
            assert isinstance(r[key], float) and r[key] > 0, (r["config"], key)
        assert r["step_min_s"] <= r["step_median_s"] and r["steps_timed"] == 3 * 2  # 3 rounds (2 prompts) x 2 steps
        assert len(r["speedup"]["per_round"]) == 3 and r["speedup"]["speedup"] == r["speedup_step_median"]
        assert r["speedup"]["speedup_min"] <= r["speedup_step_median"] <= r["speedup"]["speedup_max"]
        assert r["labels"] and set(r["labels"]) <= {"reference", *WORDS}
        assert 0 < r["attention_share"] <= 1 and r["bounds"]["end_to_end_bound"] >= 1
        assert r["fraction_of_bound"] == pytest.approx(r["speedup_step_median"] / r["bounds"]["end_to_end_bound"])
        assert r["accuracy"] == 1.0 and r["fid_vs_dense"] is not None and r["peak_memory_kind"]
    by_name = {r["config"].split()[0]: r for r in rows[1:]}
    for r in (rows[0], by_name["dense"]):  # dense vs dense (the passthrough method is bit-identical)
        assert r["psnr_db"] == PSNR_CAP_DB and r["ssim"] == pytest.approx(1.0)
        assert r["fid_vs_dense"] == pytest.approx(0.0, abs=1e-9)
    assert by_name["dense"]["bounds"]["end_to_end_bound"] == 1.0 and by_name["dense"]["sparse_calls"] == 0
    for name in ("gna", "msw", "proxy"):
        r = by_name[name]
        assert r["sparse_calls"] > 0 and r["fallback_calls"] == 0 and r["psnr_db"] < PSNR_CAP_DB
        b = r["bounds"]
        assert b["finest_grid"] == [8, 8] and b["flop_bound"] > 1 and b["attention_bound"] > 1
        assert 1 <= b["end_to_end_bound"] <= b["attention_bound"]
    assert by_name["gna"]["bounds"]["token_bound"] == 4.0 and by_name["proxy"]["bounds"]["token_bound"] is None
    for png in ("speedup_quality.png", "grid.png"):
        raw = (tmp_path / png).read_bytes()
        assert raw[:8] == PNG_MAGIC
        with Image.open(tmp_path / png) as im:
            im.verify()
    with Image.open(tmp_path / "grid.png") as im:  # one column per config (dense first), one row per prompt
        assert im.width > len(rows) * 128 and im.height > 2 * 128
    table = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(rows)  # header + one row per config
    assert all(line.startswith(f"| {r['config']} |") for line, r in zip(table[1:], rows))
    assert report["configs"][1]["images"][0].shape == (3, 32, 32)


def test_bad_config_value_leaves_pipeline_unpatched(monkeypatch):
    cmp = sys.modules["diffattn.report.compare"]  # the attribute diffattn.report.compare is the function

    pipe, kw = _pipe()
    before = _processors(pipe)
    monkeypatch.setattr(cmp, "render", lambda *a, **k: pytest.fail("a generation ran"))
    configs = [RunConfig.parse("msw"), RunConfig.parse("gna window=0")]
    with pytest.raises(ValueError, match=r"config 'gna window=0': .*window=0 must be >= 1"):
        compare(pipe, configs, ["a fox"], call_kwargs=kw)
    assert _processors(pipe) == before
    with pytest.raises(ValueError, match="FID needs >= 2 images per config, got 1"):
        compare(pipe, configs[:1], ["a fox"], call_kwargs=kw, feature_extractor=TinyFeatures())
    with pytest.raises(ValueError, match="got 1 seeds for 2 prompts"):
        compare(pipe, configs[:1], ["a", "b"], [0], call_kwargs=kw)
    assert _processors(pipe) == before


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a red fox\n\ntwo cats\n")
    return path


CLI_ERRORS = [
    ("compare", ["--config", "msw"], "empty", "has no prompts"),
    ("compare", ["--config", "nope window=3"], None, "unknown attention method 'nope'"),
    ("compare", ["--config", "gna windw=3"], None, "unknown knob(s) ['windw'] for method 'gna'"),
    ("compare", [], None, "no method config given"),
    ("eval", ["--config", "msw", "--num-images", "1", "--inception", "x.pth"], None, "FID needs >= 2 images"),
    ("eval", ["--config", "msw"], None, "FID needs Inception weights: pass --inception PATH"),
    ("eval", ["--config", "msw", "--inception", "/nonexistent/inception.pth"], None, "pass --inception PATH to"),
    ("compare", ["--config", "msw", "--clip", "/nonexistent/clip"], None, "CLIP weights not found at"),
    ("compare", ["--config", "msw", "--lpips", "/nonexistent/lpips.pt"], None, "LPIPS weights not found at"),
    ("compare", ["--config", "msw", "--device", "cuda"], None, "no CUDA device"),
]


@pytest.mark.parametrize(
    "command, argv, prompts, message",
    CLI_ERRORS,
    ids=["empty-prompts", "unknown-method", "unknown-knob", "no-config", "fid-one-image", "no-inception",
         "missing-inception", "missing-clip", "missing-lpips", "cuda-without-gpu"],
)
def test_cli_bad_input(tmp_path, capsys, prompt_file, command, argv, prompts, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if prompts == "empty":
        prompt_file.write_text("\n  \n")
    out = tmp_path / "out"
    code = main([command, "--model", MODEL, "--prompts", str(prompt_file), "--out", str(out), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran, nothing written


def test_compare_times_the_steps_of_both_wan22_experts():
    """Wan 2.2 runs ``transformer`` then ``transformer_2``: every step is timed, whichever expert runs it
    (the step timer once hooked only the first denoiser, so the second expert's steps went untimed)."""
    pipe = build_tiny_pipeline("tiny-wan22")
    pipe.set_progress_bar_config(disable=True)
    kw = {k: v for k, v in tiny_call_kwargs("tiny-wan22").items() if k not in ("prompt", "generator")}
    ran = {attr: 0 for attr in ("transformer", "transformer_2")}
    hooks = [
        getattr(pipe, attr).register_forward_hook(lambda m, a, o, attr=attr: ran.__setitem__(attr, ran[attr] + 1))
        for attr in ran
    ]
    try:
        report = compare(pipe, [RunConfig("gna", (("window", 3),))], ["a fox"], [0], call_kwargs=kw, warmup=False,
                         progress=False)  # fmt: skip
    finally:
        for h in hooks:
            h.remove()
    assert all(n > 0 for n in ran.values()), ran  # both experts ran
    for row in report["configs"]:  # one prompt, cycled to the protocol's 3 rounds
        assert row["steps_timed"] == 3 * kw["num_inference_steps"], row["config"]


def test_compare_interleaves_configs_after_one_warm_up_each(monkeypatch):
    """Warm-up dense, warm-up config, then dense / config alternating, one prompt per round, the prompts cycled to
    3 rounds; the images come from the first pass only."""
    cmp = sys.modules["diffattn.report.compare"]
    from diffattn.patch import _ACTIVE

    pipe, kw = _pipe()
    seen = []
    original = cmp.render
    monkeypatch.setattr(cmp, "render", lambda p, k, prompt, seed: (seen.append((bool(_ACTIVE), prompt)),
                                                                   original(p, k, prompt, seed))[1])
    report = compare(pipe, [RunConfig.parse("gna window=4 stride=4")], ["a fox", "two cats"], call_kwargs=kw,
                     progress=False)
    assert seen == [(False, "a fox"), (True, "a fox"),  # the untimed warm-ups
                    (False, "a fox"), (True, "a fox"), (False, "two cats"), (True, "two cats"),
                    (False, "a fox"), (True, "a fox")]
    assert report["meta"]["rounds"] == 3 and all(len(r["images"]) == 2 for r in report["configs"])
    assert report["configs"][0]["labels"] == ["reference"]
    from diffattn.report.outputs import markdown

    text = markdown(report["meta"], [{k: v for k, v in r.items() if k != "images"} for r in report["configs"]])
    row = next(line for line in text.splitlines() if line.startswith("| gna"))
    assert "; ".join(report["configs"][1]["labels"]) in row and "Load average" in text


@pytest.mark.slow
def test_compare_without_arguments_runs_the_embedded_model(tmp_path, capsys):
    """No --prompts, no --config: the embedded model's class captions and its default configs, accuracy filled."""
    from diffattn.cli.report import TINY_CONFIGS
    from diffattn.pipelines.tiny_shapes.job import method_knobs

    assert [RunConfig.parse(t) for t in TINY_CONFIGS] == [RunConfig(m, tuple(method_knobs(m).items()))
                                                          for m in ("gna", "freeswim", "msw")]
    out = tmp_path / "out"
    argv = ["compare", "--steps", "2", "--height", "64", "--width", "64", "--num-images", "3", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    data = json.loads((out / "report.json").read_text())
    assert data["meta"]["pipeline"] == "TinyShapesPipeline" and len(data["meta"]["prompts"]) == 3
    assert [r["config"] for r in data["configs"]] == [REFERENCE, *TINY_CONFIGS]
    for r in data["configs"]:
        assert r["accuracy"] is not None and r["accuracy_wilson95"][0] <= r["accuracy"] <= r["accuracy_wilson95"][1]
    assert "accuracy [95%]" in capsys.readouterr().out
    assert main(["compare", "--model", MODEL, "--out", str(tmp_path / "x")]) == 2
    assert "--prompts is required for --model tiny-pixart-alpha" in capsys.readouterr().err
