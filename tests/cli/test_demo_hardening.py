"""The demo under hostile input: only the models offered at start, sizes and steps within the server's limits, a
bounded queue, a run that stops when its client is gone, no uploads, no temp files left, a warning beyond loopback."""

from __future__ import annotations

import json
import tempfile
import threading
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="the demo needs the 'demo' extra (pip install -e '.[demo]')")

from diffattn import demo  # noqa: E402
from diffattn.cli import main  # noqa: E402
from diffattn.models.denoisers import denoisers_of  # noqa: E402
from tests.helpers import served  # noqa: E402

MODEL = "tiny"
RANDOM = "tiny-pixart-alpha"
PROMPT = "a red circle on a blue background"
LIMITS = {MODEL: demo.Limits(max_side=64, max_steps=40, max_frames=1)}


@pytest.fixture(scope="module")
def server():
    blocks = demo.build_demo([MODEL, RANDOM], limits=LIMITS, queue_size=1)
    with served(blocks) as url:
        yield blocks, url


@pytest.fixture
def client(server):
    from gradio_client import Client

    return Client(server[1], verbose=False)


class Gate:
    """A pre-hook on the server's pipeline: counts denoiser calls and holds the first until released."""

    def __init__(self, model: str = MODEL) -> None:
        self.pipe = demo.load_pipeline(model)
        self.calls = 0
        self.entered, self.release = threading.Event(), threading.Event()
        self.handles = [d.register_forward_pre_hook(self._pre) for _, d in denoisers_of(self.pipe)]

    def _pre(self, module, args):
        self.calls += 1
        self.entered.set()
        assert self.release.wait(timeout=120)

    def close(self) -> None:
        self.release.set()
        for h in self.handles:
            h.remove()


def _args(model=MODEL, height=32, width=32, steps=4, seed=0):
    return (model, "gna", json.dumps({"window": 4}), PROMPT, height, width, steps, seed)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"height": 32768, "width": 32768}, r"height=32768 is out of range for 'tiny': this demo accepts an int in "
                                            r"\[1, 64\] \(the server's `diffattn demo --max-side` sets it\)"),
        ({"steps": 10**9}, r"steps=1000000000 is out of range for 'tiny': this demo accepts an int in \[1, 40\]"),
        ({"steps": 0}, r"steps=0 is out of range"),
        ({"width": -32}, r"width=-32 is out of range"),
        ({"seed": -1}, r"seed=-1 is out of range"),
    ],
    ids=["32768px", "steps-1e9", "steps-0", "negative-width", "negative-seed"],
)
def test_page_requests_beyond_the_limits_are_refused_before_running(client, overrides, message):
    gate = Gate()
    gate.release.set()
    try:
        kw = dict(zip(("model", "height", "width", "steps", "seed"), (MODEL, 32, 32, 4, 0))) | overrides
        with pytest.raises(Exception, match=message):
            client.predict(*_args(**kw), api_name="/generate")
        if "height" in overrides or "width" in overrides:  # inspect checks the size too
            with pytest.raises(Exception, match=message.split(" is out")[0]):
                client.predict(*_args(**kw), api_name="/inspect")
        assert gate.calls == 0  # nothing ran
    finally:
        gate.close()


def test_only_offered_models_and_no_path_probing(client, tmp_path):
    """A server path, existing or not, gets the same answer; nothing is loaded or cached for it."""
    cached = set(demo._PIPELINES)
    existing = tmp_path / "model_index.json"
    existing.write_text("{}")
    answers = []
    for name in (str(tmp_path), str(tmp_path / "missing"), "/etc/passwd", "tiny-sd"):
        with pytest.raises(Exception, match=r"is not offered here; offered: tiny, tiny-pixart-alpha") as e:
            client.predict(*_args(model=name), api_name="/generate")
        answers.append(str(e.value).replace(repr(name), "NAME"))
        with pytest.raises(Exception, match="is not offered here"):
            client.predict(*_args(model=name), api_name="/inspect")
    assert len(set(answers)) == 1, answers  # the text never depends on what exists on the server
    assert "exist" not in answers[0] and "not found" not in answers[0].lower()
    assert set(demo._PIPELINES) == cached
    dense, fast, speedup, summary = client.predict(*_args(model=RANDOM, height=16, width=16, steps=2),
                                                   api_name="/generate")  # fmt: skip
    assert Path(fast).is_file() and "sparse" in summary  # an offered model still runs


def test_a_run_whose_client_is_gone_stops_at_the_next_denoiser_call(server, client):
    """Gradio marks a running event dead when its client disconnects (and never stops the call): the run stops at
    its next denoiser call, leaves the pipeline unpatched with no hook of ours, and frees the server."""
    blocks, _ = server
    gate = Gate()
    pipe = gate.pipe
    hooks_before = {a: len(d._forward_pre_hooks_with_kwargs) for a, d in denoisers_of(pipe)}
    processors = {n: m.processor for n, m in pipe.transformer.named_modules() if hasattr(m, "processor")}
    try:
        job = client.submit(*_args(steps=40), api_name="/generate")
        assert gate.entered.wait(timeout=120)
        running = [e for jobs in blocks._queue.active_jobs if jobs for e in jobs]
        assert len(running) == 1
        running[0].alive = False  # what Gradio's queue does when the client's stream closes
        gate.release.set()
        for _ in range(1200):  # the dead event gets no result: watch the server's running jobs instead
            if not any(blocks._queue.active_jobs):
                break
            threading.Event().wait(0.1)
        assert not any(blocks._queue.active_jobs) and not job.done()
        assert gate.calls == 1  # a full run makes 2 x 40 calls (dense, then the method; CFG batched)
    finally:
        gate.close()
    assert {a: len(d._forward_pre_hooks_with_kwargs) for a, d in denoisers_of(pipe)} == hooks_before
    assert all(m.processor is processors[n] for n, m in pipe.transformer.named_modules() if hasattr(m, "processor"))
    assert client.predict(*_args(steps=2), api_name="/inspect")  # the server answers again


def test_direct_call_stops_when_alive_turns_false():
    pipe = demo.load_pipeline(MODEL)
    hooks = {a: dict(d._forward_pre_hooks_with_kwargs) for a, d in denoisers_of(pipe)}
    calls = []

    def alive() -> bool:
        calls.append(1)
        return len(calls) < 3

    with pytest.raises(demo.Cancelled, match="client of this generation is gone"):
        demo.generate(MODEL, "gna", {"window": 4}, PROMPT, 32, 32, 10, 0, alive=alive)
    assert len(calls) == 3  # stopped at the third denoiser call (of 20)
    assert {a: dict(d._forward_pre_hooks_with_kwargs) for a, d in denoisers_of(pipe)} == hooks


def test_the_queue_is_bounded(server, client):
    """queue_size=1: one running, one waiting, the third is refused."""
    gate = Gate()
    try:
        first = client.submit(*_args(steps=2), api_name="/generate")
        assert gate.entered.wait(timeout=120)
        second = client.submit(*_args(steps=2), api_name="/generate")
        for _ in range(100):  # until the second request is queued
            if sum(len(q.queue) for q in server[0]._queue.event_queue_per_concurrency_id.values()):
                break
            threading.Event().wait(0.05)
        third = client.submit(*_args(steps=2), api_name="/generate")
        with pytest.raises(Exception, match="(?i)queue is full"):
            third.result(timeout=60)
        gate.release.set()
        assert Path(first.result(timeout=120)[1]).is_file() and Path(second.result(timeout=120)[1]).is_file()
    finally:
        gate.close()


def test_uploads_are_refused_and_nothing_is_stored(server):
    import httpx

    upload_dir = Path(server[0].GRADIO_CACHE)
    before = set(upload_dir.rglob("*")) if upload_dir.exists() else set()
    url = server[1] + "gradio_api/upload"
    response = httpx.post(url, files={"files": ("big.bin", b"x" * (30 * 2**20))}, timeout=60)
    assert response.status_code == 403 and "no uploads" in response.text
    small = httpx.post(url, files={"files": ("a.txt", b"hello")}, timeout=60)
    assert small.status_code == 403
    after = set(upload_dir.rglob("*")) if upload_dir.exists() else set()
    assert not {p for p in after - before if p.name in ("big.bin", "a.txt")}
    assert demo.server_settings()["max_file_size"] == demo.MAX_UPLOAD


def test_the_session_plot_leaves_no_temp_file():
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("*.png"))
    path = demo.session_plot([{"speedup": 1.5, "bound": 2.0, "psnr": 30.0, "ssim": 0.9}])
    image = demo._read_and_delete(path)
    assert image.size[0] > 0 and not Path(path).exists()
    assert set(tmp.glob("*.png")) == before


def test_launch_warns_beyond_loopback_and_uses_the_safe_settings(monkeypatch, caplog):
    launched = []

    class FakeBlocks:
        def launch(self, **kwargs):
            launched.append(kwargs)

    loaded = []
    monkeypatch.setattr(demo, "load_pipeline", lambda name: loaded.append(name))
    monkeypatch.setattr(demo, "build_demo", lambda models, **kw: launched.append((models, kw)) or FakeBlocks())
    with caplog.at_level("WARNING", logger="diffattn.demo"):
        demo.launch([MODEL, RANDOM, MODEL], host="127.0.0.1", port=7861)
    assert not caplog.records and loaded == [MODEL, RANDOM]  # each offered model loaded once, at start
    demo.launch(MODEL, host="0.0.0.0", port=7862)
    assert "serving on 0.0.0.0:7862, beyond this machine: anyone who can reach it" in caplog.text
    settings = launched[-1]
    assert settings["server_name"] == "0.0.0.0" and settings["max_file_size"] == demo.MAX_UPLOAD
    assert settings["app_kwargs"]["middleware"] and settings["enable_monitoring"] is False
    assert all(demo.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2"))
    assert not any(demo.is_loopback(h) for h in ("0.0.0.0", "192.168.1.2", "example.com"))


def test_cli_demo_options_set_models_limits_and_queue(monkeypatch):
    got = {}
    monkeypatch.setattr(demo, "launch", lambda models, **kw: got.update(models=models, **kw))
    argv = ["demo", "--model", "tiny", "--model", "tiny-sd", "--model", "tiny", "--max-side", "1024"]
    assert main([*argv, "--max-steps", "7", "--queue-size", "3"]) == 0
    assert got["models"] == ["tiny", "tiny-sd"] and got["queue_size"] == 3 and got["host"] == "127.0.0.1"
    assert got["limits"]["tiny"] == demo.Limits(max_side=1024, max_steps=7, max_frames=1)
    assert got["limits"]["tiny-sd"] == demo.Limits(max_side=1024, max_steps=7, max_frames=33)
    assert main(["demo"]) == 0 and got["models"] == ["tiny"]
    assert got["limits"]["tiny"] == demo.DEFAULT_LIMITS["embedded"] and got["queue_size"] == demo.QUEUE_SIZE
    assert main(["demo", "--max-side", "0"]) == 2
