"""Every bad command a new user tried: one ``error:`` line on stderr naming the value and what is accepted, exit 2,
before any model loads (or, for what needs the model's shape, before anything is generated), nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffattn.cli import inputs, main
from diffattn.pipelines.tiny_shapes import pipeline as tm

GIB = 2**30


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\ntwo cats\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    knobs_list = tmp_path / "configs.json"
    knobs_list.write_text('[{"method": "gna", "knobs": [8, 8]}]')
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    from safetensors.torch import save_file
    from torch import zeros

    save_file({"Conv2d_1a_3x3.conv.weight": zeros(1)}, str(tmp_path / "inception.safetensors"))
    (tmp_path / "folder").mkdir()
    return {
        "prompts": prompts, "latin1": latin1, "knobs_list": knobs_list, "text": text, "a_file": a_file,
        "inception": tmp_path / "inception.safetensors", "folder": tmp_path / "folder",
    }  # fmt: skip


COMPARE = ["compare", "--model", "tiny-sd", "--prompts", "{prompts}", "--config", "msw"]
EVAL = ["eval", "--model", "tiny-sd", "--prompts", "{prompts}", "--config", "msw"]
RANGE = "accepted: an int in"

# (argv, message); "{name}" is a fixture file; --out is appended unless the case names it. All fail before a load.
BEFORE_LOAD = {
    "generate-steps-0": (["generate", "--steps", "0"], f"argument --steps: 0 is out of range; {RANGE} [1, 1000]"),
    "compare-steps-0": ([*COMPARE, "--steps", "0"], f"argument --steps: 0 is out of range; {RANGE} [1, 1000]"),
    "size-0": (["generate", "--model", "tiny-sd", "--height", "0", "--width", "0"],
               f"argument --height: 0 is out of range; {RANGE} [1, 1000000]"),
    "size-negative": (["generate", "--model", "tiny-sd", "--height", "-64", "--width", "64"],
                      f"argument --height: -64 is out of range; {RANGE} [1, 1000000]"),
    "size-65536": (["generate", "--model", "tiny-sd", "--height", "65536", "--width", "65536"],
                   "--height 65536 --width 65536 (its decoded image alone) needs about 48.0 GiB, more than the "
                   "16.0 GiB available on cpu"),
    "size-40000": (["generate", "--model", "tiny-sd", "--height", "40000", "--width", "40000"],
                   "needs about 17.9 GiB, more than the 16.0 GiB available on cpu: lower the size"),
    "msw-window-on-embedded": (["generate", "--method", "msw", "--window", "8"],
                               "--window is GNA's option(s) (--method gna); give msw's knobs as --knob NAME=VALUE"),
    "gna-stride-without-knob-on-pipeline": (["inspect", "--model", "tiny-sd", "--method", "proxy", "--stride", "4"],
                                            "--stride is GNA's option(s)"),
    "out-is-a-file": (["generate", "--out", "{a_file}"], "--out '{a_file}' is a file, not a folder"),
    "out-under-a-file": (["generate", "--out", "{a_file}/sub"],
                         "'{a_file}' is a file, so the folder cannot be created"),
    "compare-out-is-a-file": ([*COMPARE, "--out", "{a_file}"], "--out '{a_file}' is a file, not a folder"),
    "configs-folder": ([*COMPARE, "--configs", "{folder}"], "--configs file '{folder}' is a folder: give a file"),
    "configs-knobs-list": ([*COMPARE, "--configs", "{knobs_list}"],
                           "entry 0: \"knobs\" must be an object of NAME: VALUE, got [8, 8]"),
    "device-foo": ([*COMPARE, "--device", "foo"],
                   "argument --device: 'foo' is not a device; accepted: cpu, cuda, cuda:N"),
    "lpips-text-file": ([*COMPARE, "--lpips", "{text}"],
                        "LPIPS weights '{text}' are neither safetensors nor a torch.save checkpoint"),
    "inception-without-torch-fidelity": ([*EVAL, "--inception", "{inception}"],
                                         "--inception (FID) needs torch-fidelity: pip install 'diffattn[fid]'"),
    "simulate-grid-1e12": (["simulate", "--grid", "1e12", "--window", "3"], "argument --grid: '1e12' is not an int"),
    "simulate-window-1e8": (["simulate", "--grid", "100000000", "--window", "1e8"],
                            "argument --window: '1e8' is not an int"),
    "num-images-1e12": ([*COMPARE, "--num-images", "1e12"], f"argument --num-images: '1e12' is not an int; {RANGE}"),
    "num-images-huge": ([*COMPARE, "--num-images", "1000000000000"],
                        f"argument --num-images: 1000000000000 is out of range; {RANGE} [1, 1000000]"),
    "prompt-empty": (["generate", "--prompt", ""], "argument --prompt: is empty"),
    "prompt-blank-hub": (["generate", "--model", "tiny-sd", "--prompt", "  "], "argument --prompt: is empty"),
    "prompts-folder": (["compare", "--prompts", "{folder}", "--config", "msw"],
                       "prompt file '{folder}' is a folder: give a file"),
    "prompts-not-utf8": (["compare", "--prompts", "{latin1}", "--config", "msw"],
                         "prompt file '{latin1}' is not UTF-8 text (byte 0xe9 at offset 3)"),
    "duplicate-config": ([*COMPARE, "--config", "msw"],
                         "config 'msw' is given twice (configs 1 and 2): each config is a row of the report"),
    "duplicate-config-spelling": ([*COMPARE[:-1], "gna window=8", "--config", "gna  window=8"],
                                  "config 'gna window=8' is given twice"),
}  # fmt: skip


def _fill(items: list[str], files: dict[str, Path]) -> list[str]:
    return [item.format(**{k: str(v) for k, v in files.items()}) for item in items]


@pytest.fixture
def no_load(monkeypatch):
    """Any model load or generation fails the test; memory is 16 GiB whatever this machine has."""

    def loaded(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(inputs, "load_pipeline", loaded)
    monkeypatch.setattr(tm, "tiny_model", loaded)
    monkeypatch.setattr(inputs, "available_bytes", lambda device: 16 * GIB)
    from torchmetrics.image import fid

    monkeypatch.setattr(fid, "_TORCH_FIDELITY_AVAILABLE", False)  # as without the fid extra


def _run(argv: list[str], out: Path, capsys) -> tuple[int, list[str]]:
    if "--out" not in argv and argv[0] != "simulate" and argv[0] != "inspect":
        argv = [*argv, "--out", str(out)]
    code = main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", BEFORE_LOAD, ids=str)
def test_bad_command_is_one_line_before_any_load(case, files, tmp_path, capsys, no_load):
    argv, message = BEFORE_LOAD[case]
    out = tmp_path / "out"
    before = sorted(tmp_path.rglob("*"))
    code, err = _run(_fill(argv, files), out, capsys)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(("diffattn: error: ", "diffattn ")) and " error: " in err[0], err[0]
    assert _fill([message], files)[0] in err[0], err[0]
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even --out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "--model", "tiny-sd", "--height", "12000", "--width", "12000", "--no-dense"],
         "generating 12000x12000 needs about 35.9 GiB, more than the 16.0 GiB available on cpu"),
        (["compare", "--model", "tiny-sd", "--prompts", "{prompts}", "--config", "msw", "--height", "12000",
          "--width", "12000"], "generating 12000x12000 needs about 35.9 GiB"),
        (["generate", "--height", "4096", "--width", "4096"],
         "generating 4096x4096 (batch 6) needs about 25.1 GiB, more than the 16.0 GiB available on cpu"),
    ],
    ids=["generate-tiny-sd", "compare-tiny-sd", "embedded-model"],
)
def test_too_big_for_memory_is_refused_with_the_estimate(argv, message, files, tmp_path, capsys, monkeypatch):
    """Sizes whose image fits but whose activations cannot: refused from the model's shape, after the load and
    before any generation. tiny-sd (VAE factor 2, 32 channels at the first UNet level, float32):
    2 CFG x 6000^2 tokens x 32 x 4 B x 4 live = 34.3 GiB, + the image 1.6 GiB; the embedded model (patch 4, 128
    channels, 6 captions): 2 x 6 x 1024^2 x 128 x 4 B x 4 = 24.0 GiB, + 1.1 GiB of images."""
    import diffattn.cli.generate as cli_generate
    import diffattn.report.compare as report_compare  # noqa: F401 - the module, for its render

    monkeypatch.setattr(inputs, "available_bytes", lambda device: 16 * GIB)
    monkeypatch.setattr(cli_generate, "_Runs", lambda *a, **k: pytest.fail("a generation ran"))
    out = tmp_path / "out"
    before = sorted(tmp_path.rglob("*"))
    code, err = _run(_fill(argv, files), out, capsys)
    assert code == 2 and len(err) == 1, err
    assert _fill([message], files)[0] in err[0], err[0]
    assert sorted(tmp_path.rglob("*")) == before


def test_unwritable_out_is_refused_before_load(files, tmp_path, capsys, monkeypatch, no_load):
    """(Root writes anywhere, so the check's answer is faked: what is tested is that it is asked, and first.)"""
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real(p, mode))
    code, err = _run(["generate", "--out", str(tmp_path / "new" / "out")], tmp_path, capsys)
    assert code == 2 and len(err) == 1
    assert f"--out '{tmp_path / 'new' / 'out'}' cannot be created ('{tmp_path}' is not writable)" in err[0]


def test_verbose_adds_the_traceback(tmp_path, capsys, files):
    code = main(["generate", "--out", str(files["a_file"]), "-v"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("diffattn: error: --out")


def test_help_still_exits_0(capsys):
    assert main(["generate", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out
