"""``diffattn generate --model tiny`` (and ``inspect``): the embedded shapes model, dense vs a sparse method, with
quality figures.

Runs the captions (one per class by default) at 2x the training resolution per side (4x the tokens), once dense and
once with the method, same seed; prints wall time and speedup, the scorer's class accuracy of both runs, PSNR/SSIM
of the accelerated images vs the dense ones, and writes a captioned side-by-side PNG grid.
"""

from __future__ import annotations

from typing import Any

import torch

from ..methods.knobs import parse_knobs
from ..pipelines.tiny_shapes import data as tiny_data
from ..pipelines.tiny_shapes import pipeline as tm
from ..pipelines.tiny_shapes.job import STEPS, class_captions, method_knobs, sample, save_grid


def cli_knobs(args: Any) -> dict[str, Any]:
    """The method's knobs from ``--knob`` / ``--window`` (GNA: sliding by default), else :func:`method_knobs`."""
    if args.method == "gna" and args.window is not None:
        return {"window": args.window, "stride": args.stride or 1, "dilation": args.dilation}
    return parse_knobs(args.method, args.knob) or method_knobs(args.method)


def tiny_inputs(args: Any) -> tuple[Any, list[str], int, int]:
    """The embedded model, the captions, the (square) size and the step count from ``generate``/``inspect``'s
    arguments; a ValueError names a non-square or bad size, or an unknown caption word."""
    pipe = tm.tiny_model()
    sizes = {v for v in (args.height, args.width) if v is not None}
    size = sizes.pop() if len(sizes) == 1 else 2 * tm.RESOLUTION
    if sizes:
        raise ValueError(f"the tiny model draws square images; got height={args.height}, width={args.width}")
    pipe.check_size(size, size)
    captions = [args.prompt] if args.prompt else class_captions(args.seed)
    for c in captions:
        tiny_data.parse_caption(c)
    return pipe, captions, size, args.steps or STEPS


def generate_tiny(args: Any) -> int:
    """The ``generate`` command for ``--model tiny`` (args as parsed by `diffattn.cli`)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from ..patch import apply_attention
    from ..pipelines.tiny_shapes.scorer import load_scorer, score

    pipe, captions, size, steps = tiny_inputs(args)
    knobs = cli_knobs(args)
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
