"""``diffattn`` command line.

diffattn generate                       # offline default: the embedded shapes model at 2x its training size
diffattn generate --model tiny-sd       # random-weight tiny SD, 256x256, GNA blocked 16x16 (structure only)
diffattn generate --model stabilityai/stable-diffusion-xl-base-1.0 --method gna --window 32 ...
diffattn inspect --model tiny-wan --height 192 --width 256   # per module: grid, text/extra tokens, bound
diffattn simulate --grid 256,256 --window 80,80 --stride 16,16 --gpu h100   # analytical bounds
diffattn highres --model tiny-pixart-alpha --height 64 --width 64   # two-stage high resolution (docs/highres.md)
diffattn compare --prompts prompts.txt --config "gna window=8 stride=8" --config msw --out report/
diffattn eval --prompts prompts.txt --inception pt_inception.pth --config msw   # FID / CLIP, torchrun-ready
diffattn methods | diffattn models | diffattn presets
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

from . import apply_attention, list_methods, supported_models
from .methods import get_method
from .pipelines import highres_cli
from .tiny import TINY_MODELS, build_tiny_pipeline, tiny_call_kwargs


def _ints(text: str) -> int | tuple[int, ...]:
    """``"16"`` -> 16, ``"8,16,16"`` -> (8, 16, 16)."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an int or a comma-separated list of ints") from None
    return values[0] if len(values) == 1 else values


def _knob(text: str) -> tuple[str, Any]:
    """``"window=8,8"`` -> ("window", (8, 8)); ints, floats, true/false and comma lists; else a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    if raw.lower() in ("true", "false"):
        return name, raw.lower() == "true"
    for parse in (_ints, float):
        try:
            return name, parse(raw)
        except (argparse.ArgumentTypeError, ValueError):
            pass
    return name, raw


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The model, method and size arguments that ``generate`` and ``inspect`` share."""
    p.add_argument(
        "--model",
        default="tiny",
        help=f"tiny (embedded trained shapes model, default), {', '.join(TINY_MODELS)} (random weights, offline), "
        "a hub id or a local path",
    )
    p.add_argument("--method", default="gna", help="attention method (see `diffattn methods`)")
    p.add_argument("--window", type=_ints, default=None, help="GNA window per axis, e.g. 16 or 16,16 or 4,16,16")
    p.add_argument("--stride", type=_ints, default=None, help="GNA stride per axis (default: = window, blocked)")
    p.add_argument("--dilation", type=_ints, default=1, help="GNA dilation per axis")
    p.add_argument(
        "--knob",
        type=_knob,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a knob of any method, repeatable: e.g. --knob window=8,8 --knob shift=false --knob ratio=0.1 "
        "(without knobs msw/proxy/agent use the model family's preset, see `diffattn presets`)",
    )
    p.add_argument("--layers", default=None, help="regex on module names to patch (default: all self-attention)")
    p.add_argument(
        "--temporal-window",
        type=int,
        default=None,
        help="also run 1-D GNA with this window over frames on temporal attention (video UNets, Latte); "
        "default: temporal attention stays dense",
    )
    p.add_argument("--height", type=int, default=None, help="image height (tiny-sd default 256)")
    p.add_argument("--width", type=int, default=None, help="image width (tiny-sd default 256)")
    p.add_argument("--frames", type=int, default=None, help="video frames (video models)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (tiny default 2, hub default 30)")
    p.add_argument("--prompt", default=None, help="hub default: a red fox...; tiny default: one caption per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "cpu", "reference"])
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="hub models only")
    p.add_argument("-v", "--verbose", action="store_true", help="log backend choice and fallbacks")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffattn", description="Training-free sparse attention for diffusers pipelines.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate once dense and once accelerated with the same seed; time both")
    _add_run_args(g)
    g.add_argument("--out", type=Path, default=Path("diffattn_out"), help="output directory")
    g.add_argument("--no-dense", action="store_true", help="skip the dense reference run")
    i = sub.add_parser(
        "inspect",
        help="per patched module: family, kind, grid, text/extra tokens, method and bound, from one denoiser call",
    )
    _add_run_args(i)
    s = sub.add_parser("simulate", help="analytical speedup bounds of a GNA config (token, tile, Amdahl, roofline)")
    s.add_argument("--grid", type=_ints, required=True, help="token grid, e.g. 256,256 or 30,48,80 (frames first)")
    s.add_argument("--window", type=_ints, required=True, help="GNA window per axis, >= 1")
    s.add_argument("--stride", type=_ints, default=1, help="GNA stride per axis, in [1, window] (default 1)")
    s.add_argument("--dilation", type=_ints, default=1, help="GNA dilation per axis, >= 1 (default 1)")
    s.add_argument("--q-tile", type=_ints, default=None, help="Q tile shape (default: H100 FNA 128 / 16,8 / 4,4,8)")
    s.add_argument("--kv-tile", type=_ints, default=None, help="KV tile shape (default: as --q-tile's default)")
    s.add_argument("--attention-share", type=float, default=None, help="measured attention share of step time, [0, 1]")
    s.add_argument("--gpu", default=None, help="add a roofline estimate for this GPU (accepted: h100)")
    s.add_argument("--heads", type=int, default=24, help="heads for the roofline estimate, >= 1")
    s.add_argument("--head-dim", type=int, default=128, help="head dim for the roofline estimate, >= 1")
    s.add_argument("--batch", type=int, default=1, help="batch for the roofline estimate, >= 1")
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_parser("demo", help="the Gradio demo (needs the 'demo' extra); see `diffattn demo --help`", add_help=False)
    from .report.cli import add_commands

    add_commands(sub, TINY_MODELS)
    sub.add_parser("methods", help="list attention methods")
    sub.add_parser("models", help="list supported denoisers and the offline tiny models")
    sub.add_parser("presets", help="list the default knobs, layers and steps per (method, model family)")
    highres_cli.add_parser(sub, _ints, _knob, TINY_MODELS)
    return p


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """Pipeline and call kwargs: the embedded model, tiny offline models, or ``from_pretrained`` for hub ids / paths."""
    if args.model == "tiny":
        from .pipelines.tiny_shapes.job import tiny_inputs

        pipe, captions, size, steps = tiny_inputs(args)
        return pipe, {"prompt": captions[0], "height": size, "width": size, "num_inference_steps": steps}
    if args.model in TINY_MODELS:
        pipe = build_tiny_pipeline(args.model)
        size = 256 if args.model == "tiny-sd" else None
        kw = tiny_call_kwargs(args.model, seed=args.seed, height=args.height or size, width=args.width or size)
        kw["num_inference_steps"] = args.steps or kw["num_inference_steps"]
        kw["output_type"] = "pil"
        return pipe, kw
    from diffusers import DiffusionPipeline

    dtype = (
        getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    )
    try:
        pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
    except Exception as e:  # noqa: BLE001 - re-raised with what the user can do about it
        raise SystemExit(
            f"could not load {args.model!r} ({type(e).__name__}: {e}). Give a local path or a hub id whose "
            f"weights are cached, or one of the offline models: {', '.join(TINY_MODELS)}"
        ) from e
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    prompt = args.prompt or "a red fox in the snow, highly detailed"
    kw: dict[str, Any] = {"prompt": prompt, "num_inference_steps": args.steps or 30}
    for key, value in (("height", args.height), ("width", args.width), ("num_frames", args.frames)):
        if value is not None:
            kw[key] = value
    return pipe, kw


def _run(pipe: Any, kw: dict[str, Any], seed: int) -> tuple[Any, float]:
    call = dict(kw, generator=torch.Generator("cpu").manual_seed(seed))
    start = time.perf_counter()
    out = pipe(**call)
    return out, time.perf_counter() - start


def _save(out: Any, path: Path) -> Path:
    images = getattr(out, "images", None)
    if images is not None:
        target = path.with_suffix(".png")
        images[0].save(target)
        return target
    frames = out.frames[0]
    target = path.with_suffix(".gif")
    frames[0].save(target, save_all=True, append_images=list(frames[1:]), duration=125, loop=0)
    return target


def _knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The method's knobs from the command line; a ValueError/TypeError for an unknown method or knob
    name (checked before any model is loaded)."""
    knobs: dict[str, Any] = dict(args.knob)
    if args.method == "gna" and not knobs:
        window = 16 if args.window is None else args.window  # the offline default: blocked 16x16
        knobs = {"window": window, "stride": args.stride or window, "dilation": args.dilation}
    elif args.window is not None or args.stride is not None:
        raise ValueError("--window/--stride/--dilation are GNA's knobs; give other knobs as --knob NAME=VALUE")
    known = [f.name for f in dataclasses.fields(get_method(args.method).Config)]
    unknown = sorted(set(knobs) - set(known))
    if unknown:
        raise TypeError(f"unknown knob(s) {unknown} for method {args.method!r}; accepted knobs: {known}")
    return knobs


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """``apply_attention``'s module, backend and temporal choices from the command line."""
    return {"layers": args.layers, "backend": args.backend, "temporal_window": args.temporal_window}


def generate(args: argparse.Namespace) -> int:
    if args.model == "tiny":  # the embedded trained model: its own job (accuracy, PSNR/SSIM, captioned grid)
        from .pipelines.tiny_shapes.job import generate_tiny

        return generate_tiny(args)
    knobs = _knobs(args)
    pipe, kw = _load(args)
    # Validate knob values, preset, layers and backend on this pipeline before any generation: a
    # trial install that is removed at once (apply/remove is bit-exact).
    apply_attention(pipe, args.method, **_where(args), **knobs).remove()
    args.out.mkdir(parents=True, exist_ok=True)
    dense_time = None
    if not args.no_dense:
        print("dense run:", file=sys.stderr)
        out, dense_time = _run(pipe, kw, args.seed)
        print(f"wrote {_save(out, args.out / 'dense')}")
    handle = apply_attention(pipe, args.method, **_where(args), **knobs)
    try:
        print(f"{args.method} run ({handle.config}):", file=sys.stderr)
        out, fast_time = _run(pipe, kw, args.seed)
        print(f"wrote {_save(out, args.out / args.method)}")
        outside = sum(st.dense for st in handle.stats().values())
        stats = (
            f"{handle.sparse_calls} sparse / {handle.fallback_calls} dense-fallback / {outside} dense outside "
            f"steps attention calls on {len(handle.modules)} modules"
        )
    finally:
        handle.remove()
    print(f"model {args.model}  method {args.method}  backend {handle.backend}  {stats}")
    if dense_time is not None:
        print(
            f"dense {dense_time:.3f} s   {args.method} {fast_time:.3f} s   "
            f"speedup {dense_time / fast_time:.2f}x (same seed)"
        )
    else:
        print(f"{args.method} {fast_time:.3f} s")
    return 0


def inspect(args: argparse.Namespace) -> int:
    """``diffattn inspect``: the per-module table of what the method would do, from one denoiser call."""
    from .patch.dry_run import dry_run

    if args.model == "tiny":
        from .pipelines.tiny_shapes.job import cli_knobs

        knobs = cli_knobs(args)
    else:
        knobs = _knobs(args)
    pipe, kw = _load(args)
    kw["generator"] = torch.Generator("cpu").manual_seed(args.seed)
    print(dry_run(pipe, kw, args.method, **_where(args), **knobs))
    return 0


def simulate(args: argparse.Namespace) -> int:
    from .sim import simulate as run_simulation

    grid = args.grid if isinstance(args.grid, tuple) else (args.grid,)
    result = run_simulation(
        grid,
        args.window,
        args.stride,
        args.dilation,
        q_tile=args.q_tile,
        kv_tile=args.kv_tile,
        attention_share=args.attention_share,
        gpu=args.gpu,
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
    )
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.format())
    return 0


def presets_table() -> str:
    """The presets as an aligned text table: method, family, knobs, layers, steps, source."""
    from .presets import table

    columns = ("method", "family", "knobs", "layers", "steps", "source")
    rows = [dict(zip(columns, columns))] + table()
    widths = {c: max(len(r[c]) for r in rows) for c in columns[:-1]}
    lines = ["  ".join([*(r[c].ljust(widths[c]) for c in columns[:-1]), r["source"]]) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:  # its own parser: host, port, share, model
        from .demo import main as demo_main

        return demo_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
    if args.command == "methods":
        print("\n".join(list_methods()))
        return 0
    if args.command == "models":
        print("denoisers:", ", ".join(supported_models()))
        print("embedded trained model: tiny (shapes, 32px)")
        print("offline tiny models (random weights):", ", ".join(TINY_MODELS))
        return 0
    if args.command == "presets":
        print(presets_table())
        return 0
    try:
        if args.command == "highres":
            return highres_cli.run(args, _load)
        if args.command in ("compare", "eval"):
            from .report.cli import run

            return run(args)
        if args.command == "inspect":
            return inspect(args)
        return simulate(args) if args.command == "simulate" else generate(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"diffattn: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
