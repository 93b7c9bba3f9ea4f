"""What every benchmark driver shares: progress lines on stderr, the run's ``meta`` record, and writing
``<stem>.json`` + ``<stem>.md``."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    """One progress line on stderr (flushed: benchmarks run for minutes)."""
    print(msg, file=sys.stderr, flush=True)


def run_meta(argv: list[str] | None, start: float, **extra: object) -> dict:
    """The ``meta`` record of a run that started at ``start`` (`time.perf_counter`): date, machine, threads,
    versions, ``extra``, runtime, and the command (the script's name and ``argv``, default ``sys.argv``)."""
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


def write_result(out: Path, stem: str, payload: dict, md: str, echo: bool = True) -> None:
    """``out/<stem>.json`` (``payload``, with its ``meta``) and ``out/<stem>.md`` (``md``, also printed if
    ``echo``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    if echo:
        print(md)
    log(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.md'} in {payload['meta']['runtime_s']:.0f} s")
