"""``diffattn compare`` and ``diffattn eval``: the report commands of the ``diffattn`` CLI.

diffattn compare      # the embedded model: its class captions, gna / freeswim / msw at the training window, accuracy
diffattn compare --model tiny-sd --prompts prompts.txt --config "gna window=8 stride=8" --config msw --out report/
torchrun --nproc_per_node 8 -m diffattn.cli eval --model PATH --prompts coco.txt --inception pt_inception.pth \
    --config "gna window=32 stride=16" --out eval/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ..pipelines.load import EMBEDDED
from . import args as opt
from .inputs import before_load, load, read_configs, read_prompts

TINY_SAMPLES = 6
"""``compare``'s samples on the embedded model without ``--prompts``: one caption per class."""
TINY_CONFIGS = ("gna window=8,8 stride=1,1", "freeswim train_grid=8,8", "msw window=8,8")
"""``compare``'s configs on the embedded model without ``--config``: the training receptive field (8x8 tokens)."""


def add_parsers(sub: Any) -> None:
    """The ``compare`` and ``eval`` subcommands."""
    c = sub.add_parser("compare", help="dense vs method configs: speed beside its bounds, quality vs dense, plots")
    e = sub.add_parser("eval", help="FID / CLIP / scorer over a prompt file, dense and each config (data-parallel)")
    opt.model(c, EMBEDDED, f"tiny (the embedded trained shapes model, default), {opt.OFFLINE} (offline), a hub id "
              "or a path")  # fmt: skip
    c.add_argument("--prompts", type=Path, default=None,
                   help="prompt file, one prompt per non-empty line (default on the embedded model: one caption "
                   "per class)")
    opt.model(e, "tiny-sd", f"{opt.OFFLINE} (offline), a hub id or a path")
    e.add_argument("--prompts", type=Path, required=True, help="prompt file, one prompt per non-empty line")
    for p in (c, e):
        opt.num_images(p, "samples (prompts cycle); default: one per prompt"
                       + (f" (embedded model: {TINY_SAMPLES}, one per class)" if p is c else ""))
        p.add_argument(
            "--config",
            action="append",
            default=[],
            metavar="'METHOD [NAME=VALUE ...]'",
            help="a method config, repeatable: e.g. --config 'gna window=8,8 stride=8,8' --config msw"
            + (" (default on the embedded model: " + ", ".join(f"'{t}'" for t in TINY_CONFIGS) + ")" if p is c else ""),
        )
        p.add_argument("--configs", type=Path, default=None, help='JSON list of {"method": ..., "knobs": {...}}')
        opt.steps(p, "denoising steps (tiny-* default 2, embedded model 20, hub default 30)")
        opt.size(p)
        opt.frames(p)
        opt.seed(p, "sample i uses seed + i")
        opt.backend(p)
        opt.device(p)
        opt.dtype(p)
        p.add_argument("--clip", default=None, help="local Hugging Face CLIP model folder (CLIP score; safetensors "
                       "weights, no remote code)")
        p.add_argument("--inception", default=None, help="FID Inception weights (.safetensors or a torch.save state "
                       "dict; needs the fid extra: pip install 'diffattn[fid]')")
        opt.out(p, "diffattn_report")
        p.add_argument("--no-progress", action="store_true")
    c.add_argument("--lpips", default=None, help="LPIPS weights (alex or vgg; .safetensors or a torch.save state dict "
                   "of lpips.LPIPS) for LPIPS vs dense")
    c.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up generation per config")
    e.add_argument("--no-fid", action="store_true", help="skip FID (no Inception weights needed)")


def _samples(args: argparse.Namespace) -> list[str]:
    if args.prompts is None:
        if args.model != EMBEDDED:
            raise ValueError(f"--prompts is required for --model {args.model} (only the embedded model has default "
                             "captions)")
        from ..pipelines.tiny_shapes.job import job_captions

        n = TINY_SAMPLES if args.num_images is None else args.num_images
        return job_captions(n, args.seed)
    prompts = read_prompts(args.prompts)
    n = len(prompts) if args.num_images is None else args.num_images  # the parser bounds --num-images
    return [prompts[i % len(prompts)] for i in range(n)]


def _configs(args: argparse.Namespace) -> list[Any]:
    """The ``--config`` / ``--configs`` given; on the embedded model with none, `TINY_CONFIGS`."""
    if args.command == "compare" and args.model == EMBEDDED and not args.config and args.configs is None:
        return read_configs(TINY_CONFIGS, None)
    return read_configs(args.config, args.configs)


def _pipeline(args: argparse.Namespace, device: Any) -> tuple[Any, dict[str, Any]]:
    load_args = argparse.Namespace(**vars(args), prompt=None)
    pipe, kw = load(load_args)  # checks the memory the request needs on --device
    pipe.to(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    kw = {k: v for k, v in kw.items() if k not in ("prompt", "generator", "output_type")}
    return pipe, kw


def run(args: argparse.Namespace) -> int:
    """Run ``compare`` or ``eval``; every input check happens before the model is loaded or run."""
    before_load(args)  # --out, --device, absurd sizes
    prompts = _samples(args)
    configs = _configs(args)
    fid = args.inception is not None if args.command == "compare" else not args.no_fid
    if fid and len(prompts) < 2:
        raise ValueError(f"FID needs >= 2 images per config, got --num-images {len(prompts)}; use >= 2")
    if fid and args.inception is None:
        raise ValueError(
            "FID needs Inception weights: pass --inception PATH (a local pt_inception weights file), or --no-fid"
        )
    from ..report.quality import load_clip, load_feature_extractor

    clip = load_clip(args.clip)  # missing paths fail here, before any model is loaded
    extractor = None if getattr(args, "no_fid", False) else load_feature_extractor(args.inception)
    if args.command == "compare":
        from ..report.compare import compare
        from ..report.quality import load_lpips

        lpips = load_lpips(args.lpips)
        pipe, kw = _pipeline(args, args.device)
        seeds = [args.seed + i for i in range(len(prompts))]
        from ..pipelines.tiny_shapes.scorer import caption_scorer

        scorer = caption_scorer() if args.model == EMBEDDED else None
        report = compare(
            pipe, configs, prompts, seeds, call_kwargs=kw, backend=args.backend, device=args.device, lpips=lpips,
            clip=clip, feature_extractor=extractor, out_dir=args.out, warmup=not args.no_warmup,
            progress=not args.no_progress, scorer=scorer,
        )
        print((args.out / "report.md").read_text())
        print(f"wrote {args.out}/report.json, report.md, speedup_quality.png, grid.png", file=sys.stderr)
        return 0 if report else 1
    from accelerate import PartialState

    from ..report.evaluate import evaluate

    # under torchrun each process takes its own GPU (state.device); on CPU, gloo
    state = PartialState(cpu=torch.device(args.device).type == "cpu")
    pipe, kw = _pipeline(args, state.device if state.device.type == "cuda" else args.device)
    result = evaluate(
        pipe, configs, prompts, kw, seed=args.seed, backend=args.backend, feature_extractor=extractor, clip=clip,
        state=state,
    )
    if state.is_main_process:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        for s in result["configs"]:
            print(json.dumps(s))
        print(f"wrote {args.out / 'eval.json'} ({result['processes']} process(es), torch {torch.__version__})")
    return 0
