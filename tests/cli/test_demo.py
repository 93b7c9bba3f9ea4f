"""The Gradio demo: plain callbacks, the HTTP API through gradio_client, and a real headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the demo needs the 'demo' extra (pip install -e '.[demo]')")

from diffattn import demo, list_methods  # noqa: E402
from tests.helpers import served  # noqa: E402

MODEL = "tiny"  # the embedded trained model (the demo's default): the scorer's accuracy shows up too
RANDOM = "tiny-pixart-alpha"  # random weights, for what needs no trained model
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.parametrize("method", [m for m in list_methods() if m != "dense"])
def test_every_method_gets_widgets_from_its_config(method):
    import dataclasses

    from diffattn.methods import get_method

    specs = demo.knob_specs(method)
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(get_method(method).Config)]
    assert all(s.kind in ("int", "float", "bool", "ints", "str", "choice") for s in specs)


def test_knob_parsing_blank_is_unset_and_bad_values_are_named():
    assert demo.parse_knobs("gna", {"window": "8,8", "stride": "", "dilation": None}) == {"window": (8, 8)}
    assert demo.parse_knobs("msw", {"shift": "false", "seed": 3.0}) == {"shift": False, "seed": 3}
    assert demo.parse_knobs("gna", {"window": [4, 4]}) == {"window": (4, 4)}  # JSON lists
    with pytest.raises(ValueError, match="window='a,b'"):
        demo.parse_knobs("gna", {"window": "a,b"})
    with pytest.raises(ValueError, match=r"unknown knob\(s\) \['bogus'\]"):
        demo.parse_knobs("gna", {"bogus": 1})


def test_build_demo_does_not_launch():
    blocks = demo.build_demo(RANDOM)
    assert isinstance(blocks, gr.Blocks)
    assert not getattr(blocks, "is_running", False)


def test_generate_leaves_the_pipeline_unpatched_on_error():
    pipe = demo.load_pipeline(MODEL)
    before = {n: m.processor for n, m in pipe.transformer.named_modules() if hasattr(m, "processor")}
    with pytest.raises(ValueError, match="window"):
        demo.generate(MODEL, "gna", {"window": 0}, "a red ring on a blue background", 32, 32, 2, 0)
    after = {n: m.processor for n, m in pipe.transformer.named_modules() if hasattr(m, "processor")}
    assert all(after[n] is p for n, p in before.items())


@pytest.fixture(scope="module")
def server():
    with served(demo.build_demo(MODEL)) as url:
        yield url


@pytest.mark.slow
def test_client_generates_and_survives_a_bad_knob(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    args = (MODEL, "gna", json.dumps({"window": 4}), "a red circle on a blue background", 32, 32, 4, 0)
    dense, fast, speedup, summary = client.predict(*args, api_name="/generate")
    assert Path(dense).is_file() and Path(fast).is_file()
    assert re.fullmatch(r"\d+\.\d\d× \[\d+\.\d\d–\d+\.\d\d\]: .+", speedup), speedup  # rounded, spread, words
    assert "PSNR" in summary and "sparse" in summary and "scorer accuracy" in summary
    with pytest.raises(Exception, match="window=0 must be >= 1"):
        client.predict(MODEL, "gna", json.dumps({"window": 0}), "a red ring on a blue background", 32, 32, 4, 0,
                       api_name="/generate")
    table = client.predict(*args, api_name="/inspect")  # still answering after the error
    assert "transformer.transformer_blocks.0.attn1" in table


@pytest.mark.slow
def test_real_browser_generates_and_screenshots(server):
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the browser test: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (driver only)")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server, wait_until="domcontentloaded")
        page.wait_for_selector("#generate", timeout=60_000)
        page.get_by_label("window (default: required; blank = preset)").fill("4,4")
        page.get_by_label("height").fill("32")
        page.get_by_label("width").fill("32")
        page.get_by_label("steps").fill("8")
        page.locator("#generate").click()
        page.wait_for_selector("#dense-image img", timeout=120_000)
        page.wait_for_selector("#fast-image img", timeout=120_000)
        page.wait_for_function("document.querySelector('#summary').innerText.includes('speedup')", timeout=120_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        summary = page.locator("#summary").inner_text()
        browser.close()
    assert "sparse" in summary and "PSNR" in summary


@pytest.mark.parametrize(
    "method_times, bound, words",
    [((0.5, 0.5, 0.5), 1.1, "above the bound: noise"), ((0.9, 1.1, 1.0), 3.0, "within noise"),
     ((0.5, 0.55, 0.5), 3.0, "faster")],
    ids=["above-bound", "within-noise", "faster"],
)
def test_result_is_rounded_and_said_in_words(monkeypatch, method_times, bound, words):
    """Never "1.42x" beside "bound 1.10x" without a word, never a raw float in a box: synthetic rows through the
    demo's formatting."""
    import torch

    import diffattn.report
    from diffattn.report.timing import Speedup

    speedup = Speedup.paired((1.0, 1.0, 1.0), method_times, bound, 16.0)
    image = torch.rand(3, 32, 32)
    common = {"images": [image], "psnr_db": 23.456789, "ssim": 0.87654321, "accuracy": None, "total_s": 0.123456789}
    row = {**common, "speedup": speedup.to_dict(), "labels": speedup.labels, "fraction_of_bound":
           speedup.fraction_of_bound, "bounds": {"end_to_end_bound": bound, "attention_bound": 16.0,
                                                  "dense_attention_share": 0.4321}, "sparse_calls": 6,
           "fallback_calls": 0}
    report = {"configs": [dict(common), row], "meta": {"load_average_before": (1.0, 1.0, 1.0),
                                                      "load_average_after": (1.5, 1.0, 1.0)}}
    monkeypatch.setattr(diffattn.report, "compare", lambda *a, **k: report)
    result = demo._compare_one(RANDOM, None, "gna", {"window": 4}, "a fox", seed=0, height=32, width=32, steps=2)
    assert result["speedup_text"].endswith(": " + words) and words in result["summary"]
    for text in (result["speedup_text"], result["summary"]):
        assert not re.search(r"\d\.\d{4,}", text), text  # no raw float
    assert result["speedup"] == round(speedup.value, 2) and result["bound"] == round(bound, 2)
    assert "Amdahl bound" in result["summary"] and "load average" in result["summary"]
    path = demo.session_plot([result, result])
    assert Path(path).stat().st_size > 0
    Path(path).unlink()
