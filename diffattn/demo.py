"""Gradio demo: one pipeline, dense vs an attention method, same seed, side by side.

    diffattn demo                      # the embedded tiny model, http://127.0.0.1:7860
    diffattn demo --model PATH --host 0.0.0.0 --port 8000 [--share]

`build_demo()` returns the Blocks without launching; `generate`, `inspect` and `knob_specs` are plain
functions, so tests (and other front ends) call them directly. The knob widgets are generated from each
registered method's config dataclass (`diffattn.methods.knobs`), so a newly registered method shows up with no
demo code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import torch

from .methods import list_methods
from .methods.knobs import KnobSpec, knob_specs, parse_knobs
from .patch import apply_attention
from .pipelines.load import EMBEDDED
from .pipelines.load import load_pipeline as load_pipeline_uncached

DEFAULT_MODEL = EMBEDDED
_PIPELINES: dict[str, Any] = {}
_LOCKS: dict[str, threading.Lock] = {}
_CACHE_LOCK = threading.Lock()


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
) -> dict[str, Any]:
    """Dense and ``method``, same prompt and seed, timed by the protocol of `diffattn.report.timing`. Returns
    the two images (PIL), the speedup (rounded, and as text with its spread and words) and its bound,
    PSNR/SSIM (and the scorer's accuracy on the embedded model). One generation at a time per model; the
    pipeline is unpatched afterwards, also on error."""
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty")
    pipe = load_pipeline(model)
    with _model_lock(model):
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


def build_demo(model: str = DEFAULT_MODEL) -> Any:
    """The Gradio Blocks (not launched). API endpoints ``/generate`` and ``/inspect`` take
    ``(model, method, knobs_json, prompt, height, width, steps, seed)``; ``/generate`` returns the dense
    and accelerated images, the speedup as text (rounded, its spread and the protocol's words) and a Markdown
    summary."""
    import json

    import gradio as gr

    methods = [m for m in list_methods() if m != "dense"]
    specs = {m: knob_specs(m) for m in methods}

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
        knobs = knobs_of(method, knobs_json)
        result = as_page_error(
            generate, model, method, knobs, prompt, height, width, steps, seed,
            progress=lambda f, d: progress(f, desc=d),
        )
        return result["dense_image"], result["image"], result["speedup_text"], result["summary"], result

    def run_api(model, method, knobs_json, prompt, height, width, steps, seed):
        return run(model, method, knobs_json, prompt, height, width, steps, seed)[:4]

    def run_inspect(model, method, knobs_json, prompt, height, width, steps, seed):
        return as_page_error(inspect, model, method, knobs_of(method, knobs_json), height, width)

    def pack(method, *values):
        flat = iter(values)
        per = {m: [next(flat) for _ in specs[m]] for m in methods}
        raw = {s.name: v for s, v in zip(specs[method], per[method])}
        return json.dumps(as_page_error(parse_knobs, method, raw))

    def record(history, result):
        history = [*history, {k: result[k] for k in ("speedup", "bound", "psnr", "ssim", "labels")}]
        return history, session_plot(history)

    with gr.Blocks(title="diffattn", analytics_enabled=False) as demo:
        gr.Markdown("# diffattn — dense vs sparse attention, same seed")
        history, last = gr.State([]), gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                model_box = gr.Textbox(
                    value=model, label="model", info="'tiny' (embedded), a tiny-… family, a local path or cached hub id"
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
                plot = gr.Image(label="this session: speedup vs quality", type="filepath", elem_id="session-plot")

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
    demo.queue(default_concurrency_limit=1)  # one generation at a time: tabs never interleave patches
    return demo


def _offline_defaults() -> None:
    """No analytics and no telemetry; offline hub unless the user configured a network (HF_HUB_OFFLINE=0)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def launch(model: str = DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """Serve the demo (``diffattn demo``: its options are parsed by `diffattn.cli.demo`)."""
    _offline_defaults()
    build_demo(model).launch(server_name=host, server_port=port, share=share)


if __name__ == "__main__":  # ``python -m diffattn.demo [options]``: the same as ``diffattn demo [options]``
    import sys

    from .cli import main

    raise SystemExit(main(["demo", *sys.argv[1:]]))
