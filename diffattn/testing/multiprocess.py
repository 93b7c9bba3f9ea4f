"""Multi-process CPU runs for tests: context parallelism and data-parallel generation.

`Spawned` starts ``world`` CPU processes (one thread each, no ports: gloo over a
`torch.distributed.FileStore` in a temporary directory, a 60 s collective timeout so a rank that
skips a collective fails instead of hanging); rank 0 saves what the job returns.

- Context parallelism (`SpawnedCases`): each rank builds the tiny Wan or FLUX transformer from seed 0
  and the same seeded inputs, turns on Ulysses with ``enable_parallelism`` and applies diffattn
  before or after it (`CPCase.order`). `single_process` computes the same case in the calling
  process without parallelism: the reference every CP output must equal.
- Data parallelism (`data_parallel_job`): the recipe of docs/multi_gpu.md, the prompts sharded with
  accelerate, a generator seeded per global sample index, call counts gathered with `gather_stats`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..patch.context_parallel import splits_input

__all__ = [
    "CPCase",
    "CPResult",
    "Spawned",
    "SpawnedCases",
    "cpu_parallelism",
    "data_parallel_job",
    "forward_case",
    "single_process",
    "tiny_transformer",
]

Order = Literal["none", "before", "after"]

# per family: default token grid and text length (both split evenly over 2 ranks)
_GRID = {"wan": (3, 6, 8), "flux": (8, 12)}
_TEXT = {"wan": 16, "flux": 16}


@dataclasses.dataclass(frozen=True)
class CPCase:
    """One forward pass of a tiny transformer under context parallelism.

    family: ``"wan"`` (image-only self-attention) or ``"flux"`` (joint ``[txt, img]`` attention).
    method: a diffattn method name, or None for no diffattn (diffusers' dense CP).
    knobs: the method's config fields, as sorted ``(name, value)`` pairs (hashable).
    order: ``"before"``/``"after"``: `apply_attention` before or after ``enable_parallelism``;
        ``"none"``: no parallelism (a plain run inside the worker, for sanity checks).
    ulysses_anything: diffusers' uneven split (``tensor_split``) instead of equal chunks.
    ring: ring degree (1 = Ulysses only); ``ring * ulysses == world``.
    grid: image token grid (``(F, H, W)`` for Wan, ``(H, W)`` for FLUX); None = the family's default.
    text_len: text tokens; None = the family's default.
    remove: remove diffattn after the forward and record the processors' state (`CPResult.restored`).
    split_text: False = a custom ``cp_plan`` that keeps the whole text on every rank (FLUX only).
    """

    family: str
    method: str | None = "gna"
    knobs: tuple[tuple[str, Any], ...] = ()
    order: Order = "after"
    ulysses_anything: bool = False
    ring: int = 1
    grid: tuple[int, ...] | None = None
    text_len: int | None = None
    remove: bool = False
    split_text: bool = True

    def __post_init__(self) -> None:
        if self.family not in _GRID:
            raise ValueError(f"CPCase family={self.family!r}; expected one of {sorted(_GRID)}")
        if self.order not in ("none", "before", "after"):
            raise ValueError(f"CPCase order={self.order!r}; expected 'none', 'before' or 'after'")
        if self.ring < 1:
            raise ValueError(f"CPCase ring={self.ring} must be >= 1")
        if not self.split_text and self.family != "flux":
            raise ValueError("CPCase split_text=False needs family='flux' (Wan never splits its text)")
        if self.grid is not None and len(self.grid) != len(_GRID[self.family]):
            raise ValueError(f"CPCase grid={self.grid} needs {len(_GRID[self.family])} axes for {self.family}")

    @property
    def id(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in self.knobs)
        parts = [self.family, self.method or "dense", knobs, self.order, "x".join(map(str, self.token_grid))]
        parts += [f"t{self.text}"] + (["anything"] if self.ulysses_anything else [])
        parts += ([f"ring{self.ring}"] if self.ring > 1 else []) + (["remove"] if self.remove else [])
        parts += [] if self.split_text else ["text-whole"]
        return "-".join(p.replace(" ", "") for p in parts if p)

    @property
    def token_grid(self) -> tuple[int, ...]:
        return self.grid or _GRID[self.family]

    @property
    def text(self) -> int:
        return _TEXT[self.family] if self.text_len is None else self.text_len


@dataclasses.dataclass
class CPResult:
    """What rank 0 of a case saw. ``error`` is the formatted exception if the case raised."""

    output: torch.Tensor | None = None
    sparse: int = 0
    fallback: int = 0
    modules: int = 0
    error: str | None = None
    #: with ``CPCase.remove``: whether every processor and its ``_parallel_config`` are exactly the
    #: objects diffusers alone would have left (see `_run_case`)
    restored: bool | None = None
    #: `diffattn.patch.context_parallel.splits_input` for the text argument, after ``enable_parallelism``
    text_split: bool | None = None


@contextlib.contextmanager
def cpu_parallelism() -> Iterator[None]:
    """Let ``enable_parallelism`` run on a CPU-only torch build: it computes ``rank %
    torch.accelerator.device_count()``, which is 0 there (diffusers 0.42.1)."""
    original = torch.accelerator.device_count
    if original() > 0:
        yield
        return
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = original  # type: ignore[assignment]


def _gloo_all_gather_anything(tensor: torch.Tensor, dim: int, group: Any) -> torch.Tensor:
    """diffusers' uneven all-gather (``ulysses_anything``) for gloo, whose all_gather needs equal
    sizes: pad every rank's part to the longest, gather, trim, concatenate in rank order."""
    import torch.distributed as dist
    from diffusers.models._modeling_parallel import gather_size_by_comm

    sizes = gather_size_by_comm(tensor.shape[dim], group)
    pad = list(tensor.shape)
    pad[dim] = max(sizes) - tensor.shape[dim]
    x = torch.cat([tensor, tensor.new_zeros(pad)], dim=dim).contiguous()
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x, group=group)
    return torch.cat([part.narrow(dim, 0, size) for part, size in zip(parts, sizes)], dim=dim)


@contextlib.contextmanager
def gloo_uneven_gather() -> Iterator[None]:
    """Route diffusers' ``_all_gather_anything`` through `_gloo_all_gather_anything` (gloo only)."""
    from diffusers.hooks import context_parallel

    original = context_parallel._all_gather_anything
    context_parallel._all_gather_anything = _gloo_all_gather_anything
    try:
        yield
    finally:
        context_parallel._all_gather_anything = original


def tiny_transformer(family: str) -> nn.Module:
    """The transformer of the tiny ``family`` pipeline (``"wan"`` or ``"flux"``), seed 0, eval mode."""
    from ..tiny import build_tiny_pipeline

    return build_tiny_pipeline(f"tiny-{family}", seed=0).transformer.eval()


def _inputs(case: CPCase) -> dict[str, Any]:
    """Seeded forward kwargs of the tiny transformer (identical on every rank)."""
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, case.text, 32, generator=g)
    if case.family == "wan":
        f, h, w = case.token_grid
        latents = torch.randn(1, 16, f, 2 * h, 2 * w, generator=g)  # patch (1, 2, 2)
        return dict(hidden_states=latents, timestep=torch.tensor([500.0]), encoder_hidden_states=text)
    h, w = case.token_grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    return dict(
        hidden_states=torch.randn(1, h * w, 16, generator=g),
        encoder_hidden_states=text,
        pooled_projections=torch.randn(1, 32, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(case.text, 3),
        guidance=torch.tensor([3.5]),
    )


def forward_case(model: nn.Module, case: CPCase) -> torch.Tensor:
    """``model``'s output on the case's seeded inputs, without gradients."""
    with torch.no_grad():
        return model(**_inputs(case), return_dict=False)[0]


def _apply(model: nn.Module, case: CPCase) -> Any:
    from ..patch import apply_attention

    return apply_attention(model, case.method, preset=False, **dict(case.knobs))


def _counts(handle: Any) -> dict[str, int]:
    if handle is None:
        return {}
    return dict(sparse=handle.sparse_calls, fallback=handle.fallback_calls, modules=len(handle.modules))


def single_process(case: CPCase) -> CPResult:
    """The case without parallelism, in this process: the reference output and counts."""
    model = tiny_transformer(case.family)
    handle = _apply(model, case) if case.method else None
    try:
        out = forward_case(model, case)
    finally:
        if handle is not None:
            handle.remove()
    return CPResult(output=out, **_counts(handle))


def _processor_state(model: nn.Module) -> list[tuple[str, Any, Any]]:
    return [
        (name, m.processor, getattr(m.processor, "_parallel_config", None))
        for name, m in model.named_modules()
        if hasattr(m, "set_processor")
    ]


def _cp_plan(model: nn.Module, case: CPCase) -> dict | None:
    """The model's own plan, or (``split_text=False``) one that leaves the text whole on every rank."""
    if case.split_text:
        return None
    plan = dict(model._cp_plan)
    plan[""] = {k: v for k, v in plan[""].items() if k not in ("encoder_hidden_states", "txt_ids")}
    return plan


def _run_case(case: CPCase, mesh: Any) -> CPResult:
    from diffusers import ContextParallelConfig

    model = tiny_transformer(case.family)
    world = torch.distributed.get_world_size()
    config = ContextParallelConfig(
        ulysses_degree=world // case.ring,
        ring_degree=case.ring,
        ulysses_anything=case.ulysses_anything,
        mesh=mesh if case.ring == 1 else None,
    )
    handle = None
    processors = _processor_state(model)
    if case.method and case.order == "before":
        handle = _apply(model, case)
    if case.order != "none":
        with cpu_parallelism():
            model.enable_parallelism(config=config, cp_plan=_cp_plan(model, case))
    if case.method and case.order != "before":
        handle = _apply(model, case)
    out = forward_case(model, case)
    result = CPResult(output=out, **_counts(handle))
    result.text_split = splits_input(model, "encoder_hidden_states")
    if case.remove and handle is not None:
        handle.remove()
        # what diffusers alone leaves: the same processor objects, each that has the attribute
        # holding the model's ParallelConfig
        given = model._parallel_config
        expected = [(n, p, given if hasattr(p, "_parallel_config") else None) for n, p, _ in processors]
        after = _processor_state(model)
        result.restored = len(after) == len(expected) and all(
            a[0] == e[0] and a[1] is e[1] and a[2] is e[2] for a, e in zip(after, expected)
        )
    return result


def _cp_job(cases: list[CPCase]) -> dict[str, CPResult]:
    """One rank of `SpawnedCases`: every case in order, ``{case.id: CPResult}``."""
    world = torch.distributed.get_world_size()
    mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (1, world), mesh_dim_names=("ring", "ulysses"))
    results = {}
    for case in cases:
        try:
            with gloo_uneven_gather():
                results[case.id] = _run_case(case, mesh)
        except Exception:  # recorded per case; every rank raises alike, so no collective is left waiting
            results[case.id] = CPResult(error=traceback.format_exc())
    return results


def _worker(rank: int, world: int, store_path: str, job: Callable[..., Any], args: tuple, out_dir: str) -> None:
    """One rank: a gloo process group over the file store, then ``job(*args)``; rank 0 saves its result."""
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # what torchrun sets, so accelerate's PartialState(cpu=True) sees this process group
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch.distributed as dist

    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        result = job(*args)
        if rank == 0:
            torch.save(result, Path(out_dir) / "result.pt")
        # no rank tears its group down while another may still be talking to it over the store
        dist.barrier()
    finally:
        dist.destroy_process_group()


class Spawned:
    """``job(*args)`` running on ``world`` spawned CPU processes; the caller may compute its
    references meanwhile, then `result` waits for rank 0's return value. ``job`` must be importable
    (a module-level function)."""

    def __init__(self, job: Callable[..., Any], args: tuple, world: int = 2) -> None:
        import torch.multiprocessing as mp

        self._tmp = tempfile.TemporaryDirectory(prefix="diffattn-mp-")
        worker_args = (world, os.path.join(self._tmp.name, "store"), job, args, self._tmp.name)
        self._context = mp.start_processes(_worker, args=worker_args, nprocs=world, join=False, start_method="spawn")

    def result(self) -> Any:
        try:
            while not self._context.join():  # raises if a rank failed
                pass
            return torch.load(Path(self._tmp.name) / "result.pt", weights_only=False)
        finally:
            self._tmp.cleanup()


class SpawnedCases(Spawned):
    """``cases`` under context parallelism on ``world`` spawned CPU processes; `result` is rank 0's
    ``{case.id: CPResult}``."""

    def __init__(self, cases: list[CPCase], world: int = 2) -> None:
        ids = [c.id for c in cases]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate case ids: {sorted({i for i in ids if ids.count(i) > 1})}")
        super().__init__(_cp_job, (cases,), world)


# --------------------------------------------------------------------------- data parallelism


def data_parallel_job(model: str, method: str, knobs: dict[str, Any], prompts: list[str], seed: int) -> dict:
    """One rank of data-parallel generation, as docs/multi_gpu.md does it: the tiny pipeline
    ``model`` with ``method`` applied, this process's share of ``prompts``, sample ``i`` generated with
    a generator seeded ``seed + i``. Returns (on every rank) ``{"images": {i: image}, "shards":
    [indices per rank], "stats": summed call counts, "local_sparse": this rank's sparse calls}``."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from ..distributed import gather_stats
    from ..patch import apply_attention
    from ..tiny import build_tiny_pipeline, tiny_output

    state = PartialState(cpu=True)  # plain PartialState() reports one process on a CPU build
    pipe = build_tiny_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    handle = apply_attention(pipe, method, preset=False, **knobs)
    mine = {}
    with state.split_between_processes(list(range(len(prompts)))) as indices:
        for i in indices:
            mine[i] = tiny_output(pipe, model, prompt=prompts[i], seed=seed + i)
    shards = gather_object([sorted(mine)])
    images = {i: img for part in gather_object([mine]) for i, img in part.items()}
    stats = gather_stats(handle)
    local_sparse = handle.sparse_calls
    handle.remove()
    return dict(images=images, shards=shards, stats=stats, local_sparse=local_sparse)
