"""Running a pipeline for a report: method configs, one seeded render, and what is measured around it.

Everything here uses only the public patching API (`apply_attention`, the handle's ``method``,
``modules`` and ``stats()``) and ordinary forward hooks, so it does not depend on patch internals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from ..methods import get_method
from ..methods.knobs import format_knobs, parse_knobs, split_assignment
from ..models.denoisers import denoisers_of
from ..patch import AttentionHandle, apply_attention
from .timing import synchronizer


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One method config to compare against dense: method name, knobs, optional ``layers`` regex."""

    method: str
    knobs: tuple[tuple[str, Any], ...] = ()
    layers: str | None = None

    def __post_init__(self) -> None:
        # a ValueError naming the known methods, or an UnknownKnobError naming the accepted knobs
        get_method(self.method).check_knob_names(k for k, _ in self.knobs)

    @property
    def label(self) -> str:
        """``"gna window=8 stride=8"``: the method then its knobs."""
        knobs = format_knobs(self.knobs)
        return " ".join(filter(None, [self.method, knobs, f"layers={self.layers}" if self.layers else ""]))

    @classmethod
    def parse(cls, text: str) -> RunConfig:
        """``"gna window=8,8 stride=8"`` -> method ``gna`` with knobs window=(8, 8), stride=8 (the knob syntax of
        `diffattn.methods.knobs`, plus ``layers=REGEX``)."""
        method, *rest = text.split() or [""]
        pairs = [split_assignment(item) for item in rest]
        layers = [v for k, v in pairs if k == "layers"]
        knobs = parse_knobs(method, [(k, v) for k, v in pairs if k != "layers"])
        return cls(method, tuple(knobs.items()), layers[0] if layers else None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """``{"method": "gna", "knobs": {"window": [8, 8]}, "layers": null}`` (JSON config files)."""
        if not isinstance(d, dict) or "method" not in d:
            raise ValueError(f"a config must be an object with a 'method' key, got {d!r}")
        knobs = parse_knobs(d["method"], d.get("knobs") or {})
        return cls(d["method"], tuple(knobs.items()), d.get("layers"))


def load_configs(texts: Sequence[str] = (), path: str | Path | None = None) -> list[RunConfig]:
    """Configs from ``--config`` strings and a JSON list file; a ValueError if there are none."""
    configs = [RunConfig.parse(t) for t in texts]
    if path is not None:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of configs, got {type(data).__name__}")
        configs += [RunConfig.from_dict(d) for d in data]
    if not configs:
        raise ValueError("no method config given: pass --config 'METHOD [NAME=VALUE ...]' (repeatable)")
    return configs


def load_prompts(path: str | Path) -> list[str]:
    """Non-empty lines of a prompt file; a ValueError naming the file if it has none."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {str(p)!r} has no prompts (one prompt per non-empty line)")
    return prompts


def apply_config(pipe: Any, config: RunConfig, backend: str = "auto") -> AttentionHandle:
    """Install ``config`` on ``pipe``; errors name the config."""
    try:
        return apply_attention(pipe, config.method, layers=config.layers, backend=backend, **dict(config.knobs))
    except (ValueError, TypeError) as e:
        raise type(e)(f"config {config.label!r}: {e}") from e


def validate_configs(pipe: Any, configs: Sequence[RunConfig], backend: str = "auto") -> None:
    """Trial-install every config (and remove it at once) before any generation runs."""
    for config in configs:
        apply_config(pipe, config, backend).remove()


@contextlib.contextmanager
def patched(pipe: Any, config: RunConfig | None, backend: str = "auto") -> Iterator[AttentionHandle | None]:
    """``config`` installed for the block (None: the unpatched pipeline); removed on exit."""
    if config is None:
        yield None
        return
    handle = apply_config(pipe, config, backend)
    try:
        yield handle
    finally:
        handle.remove()


def check_device(device: str) -> torch.device:
    """``device`` as a torch device; a ValueError if it is CUDA and none is available."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no CUDA device (torch {torch.__version__}); use cpu")
    return dev


def render(pipe: Any, call_kwargs: dict[str, Any], prompt: str, seed: int, **extra: Any) -> Tensor:
    """One generation: ``[C, H, W]`` (or video ``[F, C, H, W]``) float in [0, 1] on CPU. The seed
    seeds a fresh CPU generator, so a sample depends only on (prompt, seed), not on what ran before."""
    kw = dict(call_kwargs, prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), **extra)
    kw.update(output_type="pt", return_dict=False)
    out = pipe(**kw)[0]
    if not isinstance(out, Tensor):
        import numpy as np

        out = torch.from_numpy(np.asarray(out))
    return out[0].detach().float().cpu().clamp(0, 1)


def resolve_module(pipe: Any, qualified: str) -> nn.Module:
    """The module named ``attr.path`` (as in ``handle.modules``) of a pipeline."""
    attr, _, rest = qualified.partition(".")
    return getattr(pipe, attr).get_submodule(rest)


class StepTimer:
    """Per-step wall time from denoiser forward hooks: a step starts at the first denoiser call with a
    new timestep and lasts until the next step starts (the last one until its last call returns), so
    it includes the scheduler update and works on pipelines without ``callback_on_step_end``. Every
    denoiser of the pipeline is hooked, so steps of Wan 2.2's second expert are timed too. ``sizes`` holds
    the trailing two dims of each step's sample (its latent height and width), so the steps of a
    two-stage call can be told apart (`step_times`)."""

    def __init__(self, pipe: Any, sync: Any) -> None:
        self.sync = sync
        self.starts: list[float] = []
        self.sizes: list[tuple[int, ...] | None] = []
        self.end: float | None = None
        self._timestep: object = None
        self._hooks = []
        for _, denoiser in denoisers_of(pipe):
            self._hooks += [
                denoiser.register_forward_pre_hook(self._pre, with_kwargs=True),
                denoiser.register_forward_hook(self._post),
            ]

    def _pre(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        sample = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        size = tuple(sample.shape[-2:]) if isinstance(sample, Tensor) and sample.ndim >= 3 else None
        # a new size is a new step even at the same timestep (a two-stage refine may start where stage 1 ended)
        key = (float(t.flatten()[0]) if isinstance(t, Tensor) and t.numel() else t, size)
        if not self.starts or key != self._timestep:
            self.sync()
            self.starts.append(time.perf_counter())
            self._timestep = key
            self.sizes.append(size)

    def _post(self, module: nn.Module, args: tuple, out: Any) -> None:
        self.sync()
        self.end = time.perf_counter()

    def close(self) -> list[float]:
        """Remove the hooks; the seconds of every step, in order."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        if self.end is None:
            return []
        marks = [*self.starts, self.end]
        return [b - a for a, b in zip(marks, marks[1:])]

    def step_times(self, size: tuple[int, ...] | None = None) -> list[float]:
        """After `close`: the seconds of the steps whose sample had trailing dims ``size`` (None: all)."""
        times = self.close()
        return [t for t, s in zip(times, self.sizes) if size is None or s == tuple(size)]


class AttentionTimer:
    """Wall time inside attention modules minus their parameterized children (projections, norms):
    the attention core as the processor runs it, for dense and patched modules alike."""

    def __init__(self, modules: dict[str, nn.Module], sync: Any) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = dict.fromkeys(modules, 0.0)
        self._hooks: list[Any] = []
        self._stack: list[float] = []
        for name, module in modules.items():
            self._timed(module, name)
            for child_name, child in module.named_children():
                if child_name != "processor" and any(True for _ in child.parameters()):
                    self._timed(child, name, sign=-1.0)

    def _timed(self, module: nn.Module, name: str, sign: float = 1.0) -> None:
        def pre(m: nn.Module, args: tuple) -> None:
            self.sync()
            self._stack.append(time.perf_counter())

        def post(m: nn.Module, args: tuple, out: Any) -> None:
            self.sync()
            self.seconds[name] += sign * (time.perf_counter() - self._stack.pop())

        self._hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def close(self) -> dict[str, float]:
        for h in self._hooks:
            h.remove()
        return self.seconds


class TimedCall:
    """Times one pipeline call, as a ``with`` block around it: ``wall_s`` (the device synced at the end),
    ``step_s`` (every denoiser step, `StepTimer`; ``steps.step_times(size)`` picks a two-stage call's stage)
    and ``attention_s`` (the attention seconds of ``modules``, `AttentionTimer`; empty without modules). The
    hooks are removed when the block exits, on an error too."""

    def __init__(self, pipe: Any, device: str | torch.device = "cpu", modules: dict[str, nn.Module] | None = None):
        self.sync = synchronizer(device)
        self.steps = StepTimer(pipe, self.sync)
        self._attention = AttentionTimer(modules or {}, self.sync)
        self.wall_s, self.step_s, self.attention_s = 0.0, [], {}
        self._start = 0.0

    def __enter__(self) -> TimedCall:
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type | None, *_: Any) -> None:
        try:
            if kind is None:
                self.sync()
            self.wall_s = time.perf_counter() - self._start
        finally:
            self.step_s = self.steps.close()
            self.attention_s = self._attention.close()


def add_call_counts(total: dict[str, SimpleNamespace], stats: Mapping[str, Any]) -> None:
    """Add each module's sparse / fallback / dense calls of ``stats`` (a handle's ``stats()``) to ``total``, the
    counts of every run so far (`report.bounds.end_to_end_bounds` reads them)."""
    for name, st in stats.items():
        t = total.setdefault(name, SimpleNamespace(sparse=0, fallback=0, dense=0))
        t.sparse, t.fallback, t.dense = t.sparse + st.sparse, t.fallback + st.fallback, t.dense + st.dense


class GridRecorder:
    """Records the token grid and text length each patched module attends with, by wrapping the
    handle's method ``attend`` for the block (the method interface, not patch internals)."""

    def __init__(self, handle: AttentionHandle) -> None:
        self.method = handle.method
        self.grids: dict[str, tuple[tuple[int, ...], int]] = {}
        original = self.method.attend

        def attend(q: Tensor, k: Tensor, v: Tensor, call: Any) -> Tensor:
            text = 0 if call.extra_k is None else int(call.extra_k.shape[1])
            self.grids.setdefault(call.layer, (tuple(call.grid), text))
            return original(q, k, v, call)

        self.method.attend = attend  # type: ignore[method-assign]

    def close(self) -> dict[str, tuple[tuple[int, ...], int]]:
        del self.method.attend
        return self.grids


class MemoryMeter:
    """Peak memory of a block. CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation at start.
    CPU: the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) minus RSS at start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "unavailable"
        self.peak_bytes: int | None = None

    def __enter__(self) -> MemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda max_memory_allocated increase"
            return self
        _trim_heap()  # freed heap still counts in RSS and would hide a peak that reuses it
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._base = _status_kib("VmRSS") * 1024
            self.kind = "cpu peak RSS increase (VmHWM after reset - VmRSS before)"
        except OSError:
            self.kind = "unavailable"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self.kind != "unavailable":
            self.peak_bytes = max(0, _status_kib("VmHWM") * 1024 - self._base)


def _trim_heap() -> None:
    """Return freed malloc memory to the OS (glibc ``malloc_trim``), where there is such a call."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")
