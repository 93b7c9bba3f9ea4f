"""CPU speedup of diffattn's methods over dense SDPA (and NATTEN's CPU path), with the issue's targets.

The benchmark itself lives in `diffattn.report.kernel_bench` (timing, bounds and targets in
`diffattn.report`); this is its command line. Run it against the checkout with ``pip install -e .``
(or ``PYTHONPATH=.``).

Usage: ``python scripts/speedup.py [--quick] [--cases SUBSTR] [--no-natten] [--out DIR]``.
Writes ``DIR/speedup.json`` and ``DIR/speedup.md`` and prints the table plus PASS/MISS lines.

``--e2e [--device cpu|cuda] [--dtype bf16|fp16|fp32] [--scale S] [--repeats N] [--cases SUBSTR]``: the
end-to-end denoiser-step benchmark (`diffattn.report.e2e_bench`: FLUX-like, SDXL UNet and Wan-like
denoisers at real width and reduced depth, dense vs each method beside the Amdahl bound, plus the
attention-only memory rows). Writes ``DIR/e2e.json`` and ``DIR/e2e.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from diffattn.report import e2e_bench
from diffattn.report.kernel_bench import log, report_markdown, run_benchmark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per case after 1 warm-up (5; --e2e: 3)")
    p.add_argument("--quick", action="store_true", help="small grids and 2 repeats (smoke test)")
    p.add_argument("--cases", default="", help="only cases whose name contains this substring")
    p.add_argument("--no-natten", action="store_true", help="skip the NATTEN row")
    p.add_argument("--natten-repeats", type=int, default=2, help="timed repeats of the NATTEN row")
    p.add_argument(
        "--natten-heads-per-call", type=int, default=0, help="heads per NATTEN call; 0 = as many as fit 8 GB"
    )
    e2e = p.add_argument_group("end-to-end benchmark (--e2e)")
    e2e.add_argument("--e2e", action="store_true", help="run the end-to-end denoiser-step benchmark instead")
    e2e.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuda: triton backend)")
    e2e.add_argument("--dtype", default="bf16", choices=sorted(e2e_bench.DTYPES), help="model and attention dtype")
    e2e.add_argument("--scale", type=float, default=1.0, help="token grid side / full size, in (0, 1]")
    e2e.add_argument(
        "--memory-sides", default="128,256", help="grid sides of the attention-only memory rows (256 = 65,536 tokens)"
    )
    return p.parse_args(argv)


def meta(args: argparse.Namespace, argv: list[str] | None, start: float, **extra: object) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        **extra,
        "runtime_s": time.perf_counter() - start,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
    }


def write(out: Path, stem: str, payload: dict, md: str, echo: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    if echo:
        print(md)
    log(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'} in {payload['meta']['runtime_s']:.0f} s")


def main_e2e(args: argparse.Namespace, argv: list[str] | None) -> int:
    repeats = args.repeats or 3
    start = time.perf_counter()

    def save(payload: dict, final: bool = False) -> None:  # after every case: a timeout keeps what finished
        cuda = torch.device(args.device).type == "cuda"
        name = torch.cuda.get_device_name(torch.device(args.device)) if cuda else platform.processor() or "cpu"
        payload["meta"] = meta(
            args, argv, start, device=args.device, device_name=name, dtype=args.dtype, scale=args.scale,
            repeats=repeats, triton_quick_tune=os.environ.get("DIFFATTN_TRITON_QUICK_TUNE", "0") == "1",
        )  # fmt: skip
        write(args.out, "e2e", payload, e2e_bench.report_markdown(payload), echo=final)

    try:
        sides = tuple(int(s) for s in args.memory_sides.split(",") if s)
        payload = e2e_bench.run_e2e(
            args.device, args.dtype, args.scale, repeats, args.cases, memory_sides=sides, progress=save
        )
    except ValueError as e:
        log(f"speedup.py --e2e: {e}")
        return 2
    save(payload, final=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.e2e:
        return main_e2e(args, argv)
    repeats = 2 if args.quick else args.repeats or 5
    warnings.filterwarnings("ignore", module=r"torch\.nn\.attention\.flex_attention")
    start = time.perf_counter()
    try:
        payload = run_benchmark(
            args.quick, repeats, args.cases, not args.no_natten, args.natten_repeats, args.natten_heads_per_call
        )
    except ValueError as e:
        log(f"speedup.py: {e} (--cases)")
        return 2
    payload["meta"] = meta(args, argv, start, quick=args.quick, repeats=repeats)
    write(args.out, "speedup", payload, report_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
