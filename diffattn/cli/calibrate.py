"""``diffattn calibrate``: per module and stretch of steps, the cheapest attention that keeps a target, written as a
plan JSON file (``apply_attention(pipe, "plan.json")``, ``diffattn inspect --plan plan.json``); verified against the
uniform configuration of the same predicted bound unless ``--no-verify``.

diffattn calibrate --model tiny --target max_attn_error=0.2 --out plan.json
diffattn calibrate --model tiny --size 128 --target min_bound=1.3 --out plan.json --report-dir calibration_report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..pipelines.load import EMBEDDED
from . import args as opt
from .inputs import check_out, load, read_prompts

HELP = "find per module and stretch of steps the cheapest attention meeting a quality/speed target; write plan.json"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("calibrate", help=HELP)
    opt.model(p, EMBEDDED, f"tiny (embedded trained shapes model, default), {opt.OFFLINE} (random weights, offline), "
              "a hub id or a local path")  # fmt: skip
    p.add_argument(
        "--target", default="max_attn_error=0.05",
        help="quality and/or speed target, comma-separated NAME=VALUE: max_attn_error (relative output error per "
        "call), min_mass (kept attention mass per call), min_psnr (dB vs dense), min_bound (predicted end-to-end "
        "speedup bound), bound=flop|tile (default: max_attn_error=0.05)",
    )  # fmt: skip
    p.add_argument(
        "--out",
        dest="plan_out",
        type=Path,
        default=Path("plan.json"),
        help="the plan file to write (default plan.json)",
    )
    p.add_argument("--methods", default="gna", help="candidate families, comma-separated from gna,msw,proxy")
    p.add_argument(
        "--step-buckets", type=opt.int_in(1, 1000), default=3, help="stretches of the schedule with their own choice"
    )
    p.add_argument(
        "--budget-s",
        type=opt.float_in(0.0, 1e9),
        default=None,
        help="stop measuring after this many seconds (best so far)",
    )
    p.add_argument("--prompts", type=Path, default=None, help="prompt file, one per line (default: built-in prompts)")
    p.add_argument(
        "--queries", type=opt.int_in(1, 1_000_000), default=64, help="sampled queries per measured call (all heads)"
    )
    p.add_argument(
        "--inputs-per-step", type=opt.int_in(1, 1000), default=2, help="inputs measured at each step (they take turns)"
    )
    p.add_argument("--no-verify", action="store_true", help="skip compare on held-out prompts (dense, plan, uniform)")
    p.add_argument("--report-dir", type=Path, default=Path("calibration_report"), help="where verify writes its report")
    opt.size(p, help=" (embedded model default 64, tiny-sd 256)", what="image ")
    opt.frames(p)
    opt.steps(p, "denoising steps (embedded model 20, tiny default 2, hub default 30)")
    opt.prompt(p, None, "one prompt (instead of --prompts)")
    opt.seed(p, "input i uses seed + i; verify uses seed + 1000 + i")
    opt.backend(p)
    opt.dtype(p)
    p.add_argument("--no-progress", action="store_true")
    opt.verbose(p)


def run(args: argparse.Namespace) -> int:
    """Check every option, load the pipeline, calibrate, write the plan, print its table."""
    from ..calibration import CalibrationTarget, calibrate

    target = CalibrationTarget.parse(args.target)  # bad targets fail before any model is loaded
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    prompts = read_prompts(args.prompts) if args.prompts is not None else None
    check_out(args.plan_out.parent, "--out (its folder)")
    if args.plan_out.is_dir():
        raise IsADirectoryError(
            f"--out {str(args.plan_out)!r} is a folder; give the plan file to write, e.g. plan.json"
        )
    if not args.no_verify:
        check_out(args.report_dir, "--report-dir")
    pipe, kw = load(args)
    call = {k: v for k, v in kw.items() if k not in ("prompt", "generator", "output_type")}
    if prompts is None and args.prompt:
        prompts = [args.prompt]
    if prompts is None and args.model != EMBEDDED:
        prompts = [kw["prompt"]] if "prompt" in kw and args.model.startswith("tiny-") else None
    plan = calibrate(
        pipe, prompts, target=target, methods=methods, step_buckets=args.step_buckets, budget_s=args.budget_s,
        seed=args.seed, verify=not args.no_verify, call_kwargs=call, queries=args.queries,
        inputs_per_step=args.inputs_per_step, backend=args.backend, report_dir=args.report_dir,
        progress=not args.no_progress,
    )  # fmt: skip
    plan.save(args.plan_out)
    print(plan.describe())
    print(f"wrote {args.plan_out}" + ("" if args.no_verify else f" and the verification report in {args.report_dir}"),
          file=sys.stderr)  # fmt: skip
    return 0
