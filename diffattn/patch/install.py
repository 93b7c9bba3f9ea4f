"""`AttentionHandle`: one installed patch, as an ordered list of undo records applied all or nothing; the
registry of installed handles and the per-pipeline locks that serialize installing and removing them."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from ..kernels import Backend
from ..methods import AttentionMethod
from .generation import Generations
from .presets import Preset
from .records import UndoRecord, apply_all, undo_all
from .runtime import CallStats, _Runtime
from .summary import summary

# denoiser -> the handle currently installed on it (weak: a dropped pipeline drops its entry); changed and
# scanned only under _REGISTRY (another thread may be patching another pipeline meanwhile)
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, AttentionHandle] = weakref.WeakKeyDictionary()
_REGISTRY = threading.Lock()
# pipeline or denoiser -> its patch lock (re-entrant: apply removes the previous handle while holding it)
_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def _locked(keys: Iterable[Any]) -> Iterator[None]:
    """Hold the patch lock of every key, taken in ``id`` order so that two threads never wait on each other
    in a circle. Keys that cannot be weakly referenced get no lock (their denoisers have one)."""
    locks = []
    with _REGISTRY:
        for key in sorted(set(keys), key=id):
            try:
                locks.append(_LOCKS.setdefault(key, threading.RLock()))
            except TypeError:
                continue
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def installed_on(target: Any, denoisers: Iterable[nn.Module]) -> set[AttentionHandle]:
    """The handles installed on ``target``: on one of its ``denoisers``, or through ``target`` itself (a
    pipeline whose denoiser was replaced after apply: that handle still holds hooks on the old denoiser
    and wrappers on the pipeline)."""
    with _REGISTRY:
        handles = {_ACTIVE[d] for d in denoisers if d in _ACTIVE}
        handles.update(h for h in _ACTIVE.values() if h.target is target)
    return handles


@contextlib.contextmanager
def patching(target: Any, denoisers: Iterable[nn.Module]) -> Iterator[set[AttentionHandle]]:
    """Serialize installing and removing on ``target``: hold the patch locks of ``target``, its ``denoisers``
    and everything the handles installed on them cover; yields those handles (`installed_on`)."""
    keys: set[Any] = set(denoisers)
    try:
        keys.add(target)
    except TypeError:  # an unhashable pipeline object: its denoisers' locks serialize it
        pass
    while True:
        with _locked(keys):
            handles = installed_on(target, denoisers)
            needed = keys.union(*(h._keys() for h in handles))
            if needed <= keys:
                yield handles
                return
        keys = needed  # a handle covers more than we hold: take all of it, in order, and look again


class AttentionHandle:
    """An installed patch. ``remove()`` restores every original processor, hook and attribute; usable
    as a context manager."""

    def __init__(
        self,
        method: AttentionMethod,
        backend: Backend,
        runtimes: dict[nn.Module, _Runtime],
        generations: Generations | None = None,
        target: Any = None,
    ) -> None:
        """``target``: what `apply_attention` was given (a pipeline, or a denoiser); None = the denoisers."""
        self.method = method
        #: 1-D GNA run on temporal attention (``temporal_window``), or None
        self.temporal_method: AttentionMethod | None = None
        self.backend = backend
        self._runtimes = runtimes
        self._generations = generations or Generations()
        #: what `_install` applies, in order (processor swaps, hooks, attributes, swapped submodules)
        self._records: list[UndoRecord] = []
        self._applied: list[UndoRecord] = []
        self.removed = False
        #: the `Preset` that filled unset knobs/layers/steps, or None
        self.preset: Preset | None = None
        try:  # weak: a handle must not keep a dropped pipeline alive
            self._target: Any = weakref.ref(target) if target is not None else None
        except TypeError:
            self._target = lambda: target

    @property
    def target(self) -> Any:
        """The pipeline (or denoiser) this patch was applied to, or None."""
        return self._target() if self._target is not None else None

    def _keys(self) -> set[Any]:
        """What `patching` locks for this handle: its target (if hashable) and its denoisers."""
        keys: set[Any] = set(self._runtimes)
        try:
            keys.add(self.target)
        except TypeError:
            pass
        keys.discard(None)
        return keys

    @property
    def config(self) -> Any:
        return self.method.config

    @property
    def modules(self) -> list[str]:
        """Qualified names of every patched attention module (self-attention, then cross-attention if targeted)."""
        return [name for rt in self._runtimes.values() for name in rt.stats]

    def stats(self) -> dict[str, CallStats]:
        """Per patched module (qualified name): sparse / fallback / dense (and cross / cached) call counts."""
        return {name: s for rt in self._runtimes.values() for name, s in rt.stats.items()}

    def families(self) -> dict[str, str]:
        """Per patched module (qualified name): the preset family of its denoiser (`family_key`)."""
        return {name: rt.adapter.family_key(d) for d, rt in self._runtimes.items() for name in rt.stats}

    @property
    def sparse_calls(self) -> int:
        return sum(s.sparse for s in self.stats().values())

    @property
    def fallback_calls(self) -> int:
        return sum(s.fallback for s in self.stats().values())

    def summary(self) -> str:
        """A table per patched module: family, kind, grid and extra tokens seen, method, bound, counts
        (`diffattn.patch.summary`); warns about modules that ran but never sparse."""
        return summary(self)

    def reset_state(self) -> None:
        """Start a new generation for the calling thread: drop its method state now (the pipeline's own
        calls do this by themselves; for a bare denoiser this is the way)."""
        self._generations.start()
        for rt in self._runtimes.values():
            rt.reset()

    def extend(self, records: list[UndoRecord]) -> None:
        """Join more changes to this installed patch (e.g. RAU-Net's `SwapSubmodule` records): applied
        now, all or nothing, and undone by `remove` (in reverse, before the earlier records)."""
        with _locked(self._keys()):
            if self.removed:
                raise RuntimeError("cannot extend a removed AttentionHandle")
            self._applied += apply_all(records)
            self._records += records

    def _install(self) -> None:
        """Install all or nothing: on any error, undo what was done and re-raise."""
        self._applied = apply_all(self._records)
        with _REGISTRY:
            for denoiser, rt in self._runtimes.items():
                rt.installed = True
                _ACTIVE[denoiser] = self

    def _uninstall(self) -> None:
        for rt in self._runtimes.values():
            rt.installed = False
        errors = undo_all(self._applied)
        with _REGISTRY:
            for denoiser in self._runtimes:
                if _ACTIVE.get(denoiser) is self:
                    del _ACTIVE[denoiser]
        if errors:
            raise errors[0]

    def remove(self) -> None:
        """Restore the original processors, hooks and attributes. Idempotent and thread-safe: it waits for an
        `apply_attention` or `remove` running on the same pipeline in another thread."""
        with _locked(self._keys()):
            if not self.removed:
                self.removed = True
                self._uninstall()

    def __enter__(self) -> AttentionHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else f"{len(self.stats())} modules"
        return f"AttentionHandle({self.method.name}, {self.config}, backend={self.backend.name!r}, {state})"
