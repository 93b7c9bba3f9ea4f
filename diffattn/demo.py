"""Gradio demo: dense vs an attention method, same seed, side by side, on the models chosen at start.

    diffattn demo                      # the embedded tiny model, http://127.0.0.1:7860
    diffattn demo --model tiny --model PATH --host 0.0.0.0 --port 8000 [--share]

`build_demo()` returns the Blocks without launching; `generate`, `inspect` and `knob_specs` are plain
functions, so tests (and other front ends) call them directly. The knob widgets are generated from each
registered method's config dataclass (`diffattn.methods.knobs`), so a newly registered method shows up with no
demo code.

Anything from the page is untrusted: it picks one of the models offered at start (never a path), sizes and steps
within per-model `Limits` (raised only by `diffattn demo` options), waits in a bounded queue, and a generation
whose client has gone stops at its next denoiser call. The server takes no uploads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .methods import list_methods
from .methods.knobs import KnobSpec, knob_specs, parse_knobs
from .patch import apply_attention
from .pipelines.load import EMBEDDED
from .pipelines.load import load_pipeline as load_pipeline_uncached

DEFAULT_MODEL = EMBEDDED
QUEUE_SIZE = 8  # requests waiting beyond the one running; more are told the queue is full
MAX_UPLOAD = "1kb"  # the app has no upload widget; uploads are refused outright (`_NoUploads`), this is a backstop
_LOG = logging.getLogger(__name__)
_PIPELINES: dict[str, Any] = {}
_LOCKS: dict[str, threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one page request may ask of a model: sides in pixels, denoising steps and video frames, each in
    ``[1, max]``. The page cannot change them; ``diffattn demo --max-side/--max-steps/--max-frames`` can."""

    max_side: int
    max_steps: int
    max_frames: int

    def __post_init__(self) -> None:
        for name in ("max_side", "max_steps", "max_frames"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an int >= 1")

    def check(self, model: str, **values: Any) -> dict[str, int]:
        """``values`` (height, width, steps, frames) as ints within the limits; a ValueError naming the bad one."""
        bounds = {"height": self.max_side, "width": self.max_side, "steps": self.max_steps, "frames": self.max_frames}
        out = {}
        for name, value in values.items():
            hi = bounds[name]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
                flag = {"height": "side", "width": "side"}.get(name, name)
                raise ValueError(
                    f"{name}={value!r} is out of range for {model!r}: this demo accepts an int in [1, {hi}] "
                    f"(the server's `diffattn demo --max-{flag}` sets it)"
                )
            out[name] = value
        return out


#: per-model limits: the embedded model (trained at 32 px), the random-weight tiny pipelines, any other model
DEFAULT_LIMITS = {
    "embedded": Limits(max_side=256, max_steps=100, max_frames=1),
    "tiny": Limits(max_side=512, max_steps=50, max_frames=33),
    "hub": Limits(max_side=1536, max_steps=100, max_frames=81),
}


def default_limits(model: str, *, max_side: int | None = None, max_steps: int | None = None,
                   max_frames: int | None = None) -> Limits:
    """`DEFAULT_LIMITS` of ``model``'s kind, with any given maximum replacing the default."""
    kind = "embedded" if model == EMBEDDED else "tiny" if model.startswith("tiny-") else "hub"
    base = DEFAULT_LIMITS[kind]
    return Limits(
        max_side=base.max_side if max_side is None else max_side,
        max_steps=base.max_steps if max_steps is None else max_steps,
        max_frames=base.max_frames if max_frames is None else max_frames,
    )


class Cancelled(RuntimeError):
    """The page that asked for a generation is gone (disconnected or cancelled): it stopped at a denoiser call."""


def client_alive() -> Callable[[], bool]:
    """Whether the Gradio event running this call still has its client: Gradio marks an event dead when its
    client disconnects, and drops it from the running jobs when it is cancelled, but never stops the Python call
    itself. Outside a queued Gradio event (a direct call) it is always alive. (Reads Gradio 6's queue state.)"""
    try:
        from gradio.context import LocalContext
    except ImportError:
        return lambda: True
    blocks, event_id = LocalContext.blocks.get(None), LocalContext.event_id.get(None)
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return lambda: True

    def alive() -> bool:
        for job in list(getattr(queue, "active_jobs", [])):
            for event in job or ():
                if getattr(event, "_id", None) == event_id:
                    return bool(getattr(event, "alive", True))
        return False  # no longer running: cancelled

    return alive


@contextlib.contextmanager
def _stop_when_gone(pipe: Any, alive: Callable[[], bool] | None) -> Iterator[None]:
    """Raise `Cancelled` at the next denoiser call once ``alive()`` is False; the hooks go when the block ends."""
    if alive is None:
        yield
        return
    from .models.denoisers import denoisers_of

    def check(module: Any, args: Any, kwargs: Any) -> None:
        if not alive():
            raise Cancelled("the client of this generation is gone: stopped")

    handles = [den.register_forward_pre_hook(check, with_kwargs=True) for _, den in denoisers_of(pipe)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def load_pipeline(model: str) -> Any:
    """``"tiny"`` (the embedded trained model), a ``tiny-…`` random-weight family, a local path, or a hub
    id whose weights are already in the local cache (nothing is downloaded). Cached per name."""
    with _CACHE_LOCK:
        if model in _PIPELINES:
            return _PIPELINES[model]
    pipe = load_pipeline_uncached(model, dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=False)
    with _CACHE_LOCK:
        _PIPELINES.setdefault(model, pipe)
        _LOCKS.setdefault(model, threading.Lock())
        return _PIPELINES[model]


def _model_lock(model: str) -> threading.Lock:
    with _CACHE_LOCK:
        return _LOCKS.setdefault(model, threading.Lock())


def inspect(model: str, method: str, knobs: dict[str, Any], height: int, width: int) -> str:
    """Markdown: what ``method`` would patch on ``model`` at ``height x width`` (modules, grids, bound),
    without generating. The pipeline is left unpatched."""
    pipe = load_pipeline(model)
    with _model_lock(model):
        return _describe_patch(pipe, method, knobs, height=height, width=width)


def generate(
    model: str,
    method: str,
    knobs: dict[str, Any],
    prompt: str,
    height: int,
    width: int,
    steps: int,
    seed: int,
    progress: Callable[[float, str], None] | None = None,
    alive: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Dense and ``method``, same prompt and seed, timed by the protocol of `diffattn.report.timing`. Returns
    the two images (PIL), the speedup (rounded, and as text with its spread and words) and its bound,
    PSNR/SSIM (and the scorer's accuracy on the embedded model). One generation at a time per model; the
    pipeline is unpatched afterwards, also on error. Once ``alive()`` is False the run stops at its next
    denoiser call (`Cancelled`)."""
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty")
    pipe = load_pipeline(model)
    with _model_lock(model), _stop_when_gone(pipe, alive):
        return _compare_one(
            model, pipe, method, knobs, prompt, seed=int(seed), height=int(height), width=int(width), steps=int(steps),
            progress=progress,
        )


def _call_kwargs(model: str, height: int, width: int, steps: int) -> dict[str, Any]:
    """Pipeline call arguments besides prompt and generator (those come from `report.compare`)."""
    if model.startswith("tiny-"):
        from .tiny import tiny_call_kwargs

        kw = tiny_call_kwargs(model, height=height, width=width)
        kw.pop("prompt"), kw.pop("generator")
    else:
        kw = {"height": height, "width": width}
    kw["num_inference_steps"] = steps
    return kw


def _describe_patch(pipe: Any, method: str, knobs: dict[str, Any], *, height: int, width: int) -> str:
    handle = apply_attention(pipe, method, **knobs)
    try:
        rows = [f"| {name} |" for name in handle.modules]
        head = f"**{method}** `{handle.config}` on {len(rows)} modules, backend `{handle.backend.name}`"
    finally:
        handle.remove()
    return "\n".join([head, "", "| module |", "|---|", *rows])


def _compare_one(
    model: str, pipe: Any, method: str, knobs: dict[str, Any], prompt: str, *, seed: int, height: int, width: int,
    steps: int, progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """`report.compare` on one prompt and one config (its timing protocol: a warm-up each, 3 interleaved rounds);
    the embedded model adds its scorer's accuracy. Numbers are rounded for people and the speedup is said in
    words beside its bounds (`diffattn.report.timing`); the raw report row is kept under ``"row"``."""
    from .report import RunConfig, compare
    from .report.outputs import to_pil
    from .report.timing import load_text

    scorer = None
    if model == EMBEDDED:
        from .pipelines.tiny_shapes.scorer import load_scorer, score

        model_scorer = load_scorer()
        scorer = lambda images, prompts: score(images, prompts, model_scorer)  # noqa: E731
    config = RunConfig(method, tuple(knobs.items()))
    report = compare(pipe, [config], [prompt], [seed], call_kwargs=_call_kwargs(model, height, width, steps),
                     scorer=scorer, progress=progress is not None)
    dense, row = report["configs"]
    sp, b = row["speedup"], row["bounds"]
    words = "; ".join(row["labels"])
    speedup_text = f"{sp['speedup']:.2f}× [{sp['speedup_min']:.2f}–{sp['speedup_max']:.2f}]: {words}"
    parts = [
        f"time per image: dense {dense['total_s']:.2f} s · {method} {row['total_s']:.2f} s",
        f"**speedup per step {speedup_text}** (median [min–max] of {len(sp['per_round'])} interleaved rounds)",
        f"Amdahl bound {b['end_to_end_bound']:.2f}× ({row['fraction_of_bound']:.2f} of it) from the dense attention "
        f"share {b.get('dense_attention_share', 0.0):.0%}; attention-only bound {b['attention_bound']:.2f}×",
        f"PSNR {row['psnr_db']:.1f} dB · SSIM {row['ssim']:.3f}",
    ]
    if row["accuracy"] is not None:
        parts.append(f"scorer accuracy dense {dense['accuracy']:.0%} / {method} {row['accuracy']:.0%}")
    parts.append(f"{row['sparse_calls']} sparse / {row['fallback_calls']} fallback calls")
    meta = report["meta"]
    parts.append(load_text(meta["load_average_before"], meta["load_average_after"]))
    # small models make small images: show pixels (nearest upscale to >= 256 px), not a smudge
    return {"dense_image": to_pil(dense["images"][0], 256), "image": to_pil(row["images"][0], 256),
            "speedup": round(sp["speedup"], 2), "speedup_text": speedup_text, "labels": row["labels"],
            "bound": round(b["end_to_end_bound"], 2), "psnr": round(row["psnr_db"], 2), "ssim": round(row["ssim"], 3),
            "accuracy": row["accuracy"], "summary": " · ".join(parts), "row": {k: v for k, v in row.items()
                                                                               if k != "images"}}


def session_plot(history: list[dict[str, Any]]) -> str:
    """PNG path: this session's runs, speedup vs PSNR; a run whose speedup is noise (within noise, or above its
    bound) is drawn hollow and named so in the legend."""
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=100)
    noisy = [any("noise" in w for w in h.get("labels", [])) for h in history]
    for is_noise, style in ((False, {"label": "measured"}),
                            (True, {"label": "measured: noise", "facecolors": "none", "edgecolors": "tab:blue"})):
        pts = [h for h, n in zip(history, noisy) if n == is_noise]
        if pts:
            ax.scatter([h["psnr"] for h in pts], [h["speedup"] for h in pts], **style)
    ax.scatter([h["psnr"] for h in history], [h["bound"] for h in history], marker="_", s=300, color="tab:red",
               label="Amdahl bound")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("PSNR vs dense (dB)")
    ax.set_ylabel("speedup per step ×")
    fig.tight_layout()
    path = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
    fig.savefig(path)
    plt.close(fig)
    return path


def _knob_widget(gr: Any, spec: KnobSpec) -> Any:
    """A widget that starts unset (blank = the preset's or the config's default, named in the label), so
    only what the user touches is passed: any passed knob replaces the preset's knobs as a whole."""
    default = "required" if spec.default is None and spec.kind != "str" else spec.default
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    label = f"{spec.name} (default: {default}; blank = preset)"
    if spec.kind in ("bool", "choice"):
        choices = ["true", "false"] if spec.kind == "bool" else [str(c) for c in spec.choices]
        return gr.Dropdown(["", *choices], value="", label=label, info=spec.info)
    placeholder = "an int or per-axis ints, e.g. 8 or 8,8" if spec.kind == "ints" else f"a {spec.kind}"
    return gr.Textbox(value="", label=label, info=spec.info, placeholder=placeholder)


def build_demo(
    model: str | Sequence[str] = DEFAULT_MODEL, *, limits: dict[str, Limits] | None = None, queue_size: int = QUEUE_SIZE
) -> Any:
    """The Gradio Blocks (not launched), offering ``model`` (a name or a list: the page can pick only these), each
    within its `Limits` (default `default_limits`). API endpoints ``/generate`` and ``/inspect`` take
    ``(model, method, knobs_json, prompt, height, width, steps, seed)``; ``/generate`` returns the dense
    and accelerated images, the speedup as text (rounded, its spread and the protocol's words) and a Markdown
    summary. At most ``queue_size`` requests wait."""
    import json

    import gradio as gr

    offered = list(dict.fromkeys([model] if isinstance(model, str) else model))
    if not offered:
        raise ValueError("build_demo needs at least one model to offer")
    limits = {m: (limits or {}).get(m) or default_limits(m) for m in offered}
    methods = [m for m in list_methods() if m != "dense"]
    specs = {m: knob_specs(m) for m in methods}

    def offered_model(name: Any) -> str:
        # checked before anything touches the file system: the answer never depends on what exists on the server
        if not isinstance(name, str) or name not in limits:
            shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
            raise gr.Error(f"model {shown} is not offered here; offered: {', '.join(offered)}")
        return name

    def bounded(model: str, **values: Any) -> dict[str, int]:
        return as_page_error(limits[model].check, model, **values)

    def checked_seed(seed: Any) -> int:
        if isinstance(seed, float) and seed.is_integer():
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise gr.Error(f"seed={seed!r} is out of range: an int in [0, {2**63 - 1}]")
        return seed

    def knobs_of(method: str, knobs_json: str) -> dict[str, Any]:
        try:
            raw = json.loads(knobs_json or "{}")
        except json.JSONDecodeError as e:
            raise gr.Error(f'knobs must be a JSON object, e.g. {{"window": 8}}: {e}') from None
        if not isinstance(raw, dict):
            raise gr.Error(f"knobs must be a JSON object, got {type(raw).__name__}")
        return as_page_error(parse_knobs, method, raw)

    def as_page_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - shown in the page; the app stays up, the pipeline unpatched
            raise gr.Error(f"{type(e).__name__}: {e}") from None

    def run(model, method, knobs_json, prompt, height, width, steps, seed, progress=gr.Progress(track_tqdm=True)):  # noqa: B008
        model = offered_model(model)
        size = bounded(model, height=height, width=width, steps=steps)
        frames = _default_frames(model)
        if frames is not None:
            bounded(model, frames=frames)
        knobs = knobs_of(method, knobs_json)
        result = as_page_error(
            generate, model, method, knobs, prompt, size["height"], size["width"], size["steps"], checked_seed(seed),
            progress=lambda f, d: progress(f, desc=d), alive=client_alive(),
        )
        return result["dense_image"], result["image"], result["speedup_text"], result["summary"], result

    def run_api(model, method, knobs_json, prompt, height, width, steps, seed):
        return run(model, method, knobs_json, prompt, height, width, steps, seed)[:4]

    def run_inspect(model, method, knobs_json, prompt, height, width, steps, seed):
        model = offered_model(model)
        size = bounded(model, height=height, width=width)
        return as_page_error(inspect, model, method, knobs_of(method, knobs_json), size["height"], size["width"])

    def pack(method, *values):
        flat = iter(values)
        per = {m: [next(flat) for _ in specs[m]] for m in methods}
        raw = {s.name: v for s, v in zip(specs[method], per[method])}
        return json.dumps(as_page_error(parse_knobs, method, raw))

    def record(history, result):
        history = [*history, {k: result[k] for k in ("speedup", "bound", "psnr", "ssim", "labels")}]
        return history, _read_and_delete(session_plot(history))

    # Gradio keeps a copy of every image it serves: delete_cache drops this app's copies after an hour
    with gr.Blocks(title="diffattn", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown("# diffattn — dense vs sparse attention, same seed")
        history, last = gr.State([]), gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                # custom values reach the handler, which answers "not offered" (Gradio's own check would list them)
                model_box = gr.Dropdown(
                    offered, value=offered[0], label="model", info="the models this server offers",
                    allow_custom_value=True,
                )
                method_box = gr.Dropdown(methods, value="gna" if "gna" in methods else methods[0], label="method")
                groups, widgets = [], []
                for m in methods:
                    with gr.Group(visible=(m == method_box.value)) as group:
                        widgets += [_knob_widget(gr, s) for s in specs[m]]
                    groups.append(group)
                prompt_box = gr.Textbox(value="a red circle on a blue background", label="prompt")
                with gr.Row():
                    height_box = gr.Number(value=64, precision=0, label="height")
                    width_box = gr.Number(value=64, precision=0, label="width")
                with gr.Row():
                    steps_box = gr.Number(value=20, precision=0, label="steps")
                    seed_box = gr.Number(value=0, precision=0, label="seed")
                knobs_json = gr.Textbox(visible=False)
                with gr.Row():
                    inspect_btn = gr.Button("Inspect", elem_id="inspect")
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=2):
                with gr.Row():
                    dense_img = gr.Image(label="dense", type="pil", elem_id="dense-image", height=320)
                    fast_img = gr.Image(label="accelerated", type="pil", elem_id="fast-image", height=320)
                speedup_box = gr.Textbox(label="speedup per step (dense / method): median [min–max], in words",
                                         elem_id="speedup", interactive=False)
                summary_md = gr.Markdown(elem_id="summary")
                plot = gr.Image(label="this session: speedup vs quality", type="pil", elem_id="session-plot")

        method_box.change(lambda m: [gr.update(visible=(x == m)) for x in methods], method_box, groups, api_name=False)
        inputs = [model_box, method_box, knobs_json, prompt_box, height_box, width_box, steps_box, seed_box]
        generate_btn.click(pack, [method_box, *widgets], knobs_json, api_name=False).success(
            run, inputs, [dense_img, fast_img, speedup_box, summary_md, last], api_name=False
        ).success(record, [history, last], [history, plot], api_name=False)
        inspect_btn.click(pack, [method_box, *widgets], knobs_json, api_name=False).success(
            run_inspect, inputs, summary_md, api_name=False
        )
        # the API endpoints take the knobs as JSON (the page packs its widgets into that same box)
        api_btn = gr.Button(visible=False)
        api_btn.click(run_api, inputs, [dense_img, fast_img, speedup_box, summary_md], api_name="generate")
        api_btn.click(run_inspect, inputs, summary_md, api_name="inspect")
    # one generation at a time (tabs never interleave patches), and a bounded wait: more are refused as "queue full"
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def _default_frames(model: str) -> int | None:
    """Frames a generation of ``model`` draws (the page has no frames input: the tiny video pipelines' default)."""
    if not model.startswith("tiny-"):
        return None
    from .tiny import tiny_call_kwargs

    return tiny_call_kwargs(model).get("num_frames")


def _read_and_delete(path: str) -> Any:
    """The PNG at ``path`` as a PIL image, and the file gone (one is written per click: none may pile up)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    finally:
        os.unlink(path)


class _NoUploads:
    """ASGI middleware: the app has no upload widget, so the upload route answers 403 and nothing is stored."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("path", "").rstrip("/").endswith("/upload"):
            await send({"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"this demo takes no uploads"})
            return
        await self.app(scope, receive, send)


def server_settings() -> dict[str, Any]:
    """``Blocks.launch`` settings that every serving of the demo uses: no uploads (and a small `MAX_UPLOAD`
    backstop), no monitoring dashboard, no MCP server."""
    from starlette.middleware import Middleware

    return {
        "max_file_size": MAX_UPLOAD,
        "app_kwargs": {"middleware": [Middleware(_NoUploads)]},
        "enable_monitoring": False,
        "mcp_server": False,
    }


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _offline_defaults() -> None:
    """No analytics and no telemetry; offline hub unless the user configured a network (HF_HUB_OFFLINE=0)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def launch(
    model: str | Sequence[str] = DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
    limits: dict[str, Limits] | None = None, queue_size: int = QUEUE_SIZE,
) -> None:
    """Serve the demo (``diffattn demo``: its options are parsed by `diffattn.cli.demo`). Every offered model is
    loaded once, now (a bad name fails before anything is served); a host beyond loopback, or a share link, is
    warned about: anyone who reaches it can run generations with the offered models."""
    _offline_defaults()
    models = list(dict.fromkeys([model] if isinstance(model, str) else model))
    for name in models:
        load_pipeline(name)
    if share or not is_loopback(host):
        where = "a public Gradio share link" if share else f"{host}:{port}"
        _LOG.warning(
            "diffattn demo: serving on %s, beyond this machine: anyone who can reach it can run generations with "
            "%s (no login; within the demo's limits, one at a time); see the README's trust model", where,
            ", ".join(models),
        )
    blocks = build_demo(models, limits=limits, queue_size=queue_size)
    blocks.launch(server_name=host, server_port=port, share=share, **server_settings())


if __name__ == "__main__":  # ``python -m diffattn.demo [options]``: the same as ``diffattn demo [options]``
    import sys

    from .cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
