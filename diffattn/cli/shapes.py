"""``diffattn generate --model tiny`` (and ``inspect``): the embedded shapes model, dense vs a sparse method, with
quality figures.

Runs the captions (one per class by default) at 2x the training resolution per side (4x the tokens), once dense and
once with the method, same seed; prints wall time and speedup, the scorer's class accuracy of both runs, PSNR/SSIM
of the accelerated images vs the dense ones, and writes a captioned side-by-side PNG grid.
"""

from __future__ import annotations

from typing import Any

import torch

from ..pipelines.tiny_shapes import pipeline as tm
from ..pipelines.tiny_shapes.job import sample, save_grid
from .args import method_knobs as knobs_from_args
from .inputs import check_memory, tiny_inputs


def cli_knobs(args: Any) -> dict[str, Any]:
    """The method's knobs on the embedded model (`args.method_knobs`: GNA sliding by default, GNA's options refused
    for other methods, the training receptive field when no knob is given)."""
    return knobs_from_args(args, embedded=True)


def generate_tiny(args: Any) -> int:
    """The ``generate`` command for ``--model tiny`` (args as parsed by `diffattn.cli`)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from ..patch import apply_attention
    from ..pipelines.tiny_shapes.scorer import load_scorer, score

    knobs = cli_knobs(args)
    pipe, captions, size, steps = tiny_inputs(args)
    check_memory(pipe, {"height": size, "width": size}, batch=min(len(captions), 48))  # `sample`'s batches
    # an image model: temporal_window is refused with a clear error if set
    where = {"layers": args.layers, "backend": args.backend, "temporal_window": getattr(args, "temporal_window", None)}
    # bad knob values, layers or backend fail here, before any generation (apply/remove is bit-exact)
    apply_attention(pipe, args.method, **where, **knobs).remove()
    args.out.mkdir(parents=True, exist_ok=True)
    scorer = load_scorer()
    grid = (size // tm.PATCH, size // tm.PATCH)
    print(f"model tiny (embedded shapes model, trained at {tm.RESOLUTION}px = {tm.TRAIN_GRID[0]}x{tm.TRAIN_GRID[1]} "
          f"tokens)  size {size}px = {grid[0]}x{grid[1]} tokens  steps {steps}  {len(captions)} captions")
    rows: dict[str, torch.Tensor] = {}
    dense_time = None
    if not args.no_dense:
        rows["dense"], dense_time = sample(pipe, captions, size, args.seed, steps)
    handle = apply_attention(pipe, args.method, **where, **knobs)
    try:
        rows[args.method], fast_time = sample(pipe, captions, size, args.seed, steps)
        calls = f"{handle.sparse_calls} sparse / {handle.fallback_calls} dense-fallback attention calls"
    finally:
        handle.remove()
    for name, imgs in rows.items():
        save_grid({name: imgs}, captions, args.out / f"{name}.png")
    path = save_grid(rows, captions, args.out / "tiny_grid.png")
    print(f"method {args.method} {handle.config}  backend {handle.backend}  {calls}")
    for name, imgs in rows.items():
        print(f"{name:>8}: scorer accuracy {score(imgs, captions, scorer):.0%}")
    if dense_time is not None:
        dense, fast = rows["dense"], rows[args.method]
        psnr = peak_signal_noise_ratio(fast, dense, data_range=1.0).item()
        ssim = structural_similarity_index_measure(fast, dense, data_range=1.0).item()
        print(f"dense {dense_time:.3f} s   {args.method} {fast_time:.3f} s   speedup {dense_time / fast_time:.2f}x "
              f"(same seeds)")
        print(f"{args.method} vs dense: PSNR {psnr:.2f} dB   SSIM {ssim:.3f}")
    else:
        print(f"{args.method} {fast_time:.3f} s")
    print(f"wrote {path}")
    return 0
