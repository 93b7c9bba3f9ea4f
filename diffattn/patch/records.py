"""Undo records: every change the patcher makes is one record with ``apply`` and ``undo``. A handle
applies its records in order and, on any exception, undoes the applied ones in reverse, so a failed
install leaves nothing behind and ``remove()`` restores the very objects it replaced.

Each record also hides its change from pickling and ``copy.deepcopy`` (`_UnpatchedReduce`, an
instance-level ``__reduce_ex__``): a saved or copied pipeline is the unpatched one.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from torch import nn

logger = logging.getLogger("diffattn")

_MISSING = object()
_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks")
_NAMED = 6  # changes named in the warning about what undo left in place; the rest are counted


class UndoRecord(Protocol):
    """One reversible change. ``apply`` either changes nothing and raises, or makes its change;
    ``undo`` reverts exactly that change, leaving what someone else replaced since: it then sets ``left``
    (optional attribute) to a short name of what it left, and `undo_all` warns once about all of them."""

    def apply(self) -> None: ...

    def undo(self) -> None: ...


def apply_all(records: Sequence[UndoRecord]) -> list[UndoRecord]:
    """Apply ``records`` in order; on any exception undo the applied ones in reverse and re-raise."""
    done: list[UndoRecord] = []
    try:
        for record in records:
            record.apply()
            done.append(record)
    except BaseException:
        undo_all(done)
        raise
    return done


def undo_all(done: list[UndoRecord]) -> list[BaseException]:
    """Undo ``done`` in reverse and empty it; an undo that raises is logged, the others still run. What the
    records left in place (replaced by someone else after patching) is named in one warning."""
    errors: list[BaseException] = []
    left: list[str] = []
    for record in reversed(done):
        try:
            record.undo()
        except Exception as e:  # keep undoing: one stuck record must not leave the rest patched
            logger.exception("diffattn: undoing %s failed", type(record).__name__)
            errors.append(e)
        if getattr(record, "left", None):
            left.append(record.left)  # type: ignore[attr-defined]
    done.clear()
    if left:
        left.reverse()  # in the order they were applied
        more = f" and {len(left) - _NAMED} more" if len(left) > _NAMED else ""
        logger.warning(
            "diffattn: %d patched object(s) were replaced by someone else after patching and stay as they are: %s%s",
            len(left), ", ".join(left[:_NAMED]), more,
        )
    return errors


class _UnpatchedReduce:
    """Instance-level ``__reduce_ex__`` of a patched object (pickle and ``copy`` look it up on the
    instance): the state it reduces to has each hidden attribute at its previous value, each swapped
    submodule back, and no diffattn hook, so a pickled or deep-copied object is the unpatched one."""

    def __init__(self, obj: Any) -> None:
        self.obj = weakref.ref(obj)
        self.hook_ids: dict[int, object] = {}  # hook id -> owning record
        self.attrs: dict[str, list[tuple[object, Any]]] = {}  # name -> [(owner, previous value)], oldest first
        self.modules: dict[str, list[tuple[object, nn.Module]]] = {}

    def empty(self) -> bool:
        return not (self.hook_ids or self.attrs or self.modules)

    def __call__(self, protocol: int) -> tuple:
        obj = self.obj()
        assert obj is not None
        rv = type(obj).__reduce_ex__(obj, protocol)
        state = dict(rv[2])
        state.pop("__reduce_ex__", None)
        for name, owners in self.attrs.items():
            previous = owners[0][1]
            if previous is _MISSING:
                state.pop(name, None)
            else:
                state[name] = previous
        if self.hook_ids:
            for attr in _HOOK_DICTS:
                hooks = state[attr]
                state[attr] = type(hooks)((k, v) for k, v in hooks.items() if k not in self.hook_ids)
        if self.modules:
            modules = state["_modules"] = type(state["_modules"])(state["_modules"])
            for name, owners in self.modules.items():
                modules[name] = owners[0][1]
        return (rv[0], rv[1], state, *rv[3:])


def _guard(obj: Any) -> _UnpatchedReduce:
    guard = obj.__dict__.get("__reduce_ex__")
    if isinstance(guard, _UnpatchedReduce):
        return guard
    if guard is not None:
        raise RuntimeError(
            f"{type(obj).__name__} already has an instance-level __reduce_ex__; diffattn cannot keep its patch "
            "out of pickles of it"
        )
    guard = obj.__dict__["__reduce_ex__"] = _UnpatchedReduce(obj)
    return guard


def _release(obj: Any, owner: object) -> None:
    """Drop everything ``owner`` hid on ``obj``; remove the guard once it hides nothing."""
    guard = obj.__dict__.get("__reduce_ex__")
    if not isinstance(guard, _UnpatchedReduce):
        return
    guard.hook_ids = {k: o for k, o in guard.hook_ids.items() if o is not owner}
    for table in (guard.attrs, guard.modules):
        for name in list(table):
            table[name] = [entry for entry in table[name] if entry[0] is not owner]
            if not table[name]:
                del table[name]
    if guard.empty():
        del obj.__dict__["__reduce_ex__"]


class ForwardPreHook:
    """``module.register_forward_pre_hook(fn, with_kwargs=...)``; undo removes it."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = True) -> None:
        self.module, self.fn, self.with_kwargs = module, fn, with_kwargs
        self._removable: Any = None

    def _register(self) -> Any:
        return self.module.register_forward_pre_hook(self.fn, with_kwargs=self.with_kwargs)

    def apply(self) -> None:
        self._removable = self._register()
        try:
            _guard(self.module).hook_ids[self._removable.id] = self
        except BaseException:
            self._removable.remove()
            raise

    def undo(self) -> None:
        self._removable.remove()
        _release(self.module, self)


class ForwardHook(ForwardPreHook):
    """``module.register_forward_hook(fn)`` (``fn(module, args, output)``, after ``forward``); undo removes it."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__(module, fn, with_kwargs=False)

    def _register(self) -> Any:
        return self.module.register_forward_hook(self.fn)


class SetAttr:
    """Set the instance attribute ``obj.name = value`` (e.g. a ``forward`` override on a module, a
    pipeline method wrapper), straight in ``obj.__dict__``; undo restores the previous instance value or
    deletes it. Not for parameters, buffers or submodules (`SwapSubmodule` swaps those)."""

    def __init__(self, obj: Any, name: str, value: Any) -> None:
        self.obj, self.name, self.value = obj, name, value
        self._previous: Any = _MISSING
        self.left: str | None = None

    def apply(self) -> None:
        if isinstance(self.obj, nn.Module) and any(
            self.name in getattr(self.obj, d) for d in ("_parameters", "_buffers", "_modules")
        ):
            raise TypeError(f"{self.name!r} is a parameter, buffer or submodule of {type(self.obj).__name__}")
        self._previous = self.obj.__dict__.get(self.name, _MISSING)
        _guard(self.obj).attrs.setdefault(self.name, []).append((self, self._previous))
        self.obj.__dict__[self.name] = self.value

    def undo(self) -> None:
        self.left = None
        d = self.obj.__dict__
        if d.get(self.name, _MISSING) is self.value:
            if self._previous is _MISSING:
                del d[self.name]
            else:
                d[self.name] = self._previous
        else:
            self.left = f"{type(self.obj).__name__}.{self.name}"
        _release(self.obj, self)


class SwapSubmodule:
    """Replace the child ``parent.<name>`` by ``new`` (RAU-Net swaps convolutions); undo puts the very
    original module object back."""

    def __init__(self, parent: nn.Module, name: str, new: nn.Module) -> None:
        self.parent, self.name, self.new = parent, name, new
        self._original: nn.Module | None = None
        self.left: str | None = None

    def apply(self) -> None:
        if self.name not in self.parent._modules:
            raise KeyError(f"{type(self.parent).__name__} has no submodule {self.name!r} to swap")
        self._original = self.parent._modules[self.name]
        _guard(self.parent).modules.setdefault(self.name, []).append((self, self._original))
        self.parent._modules[self.name] = self.new

    def undo(self) -> None:
        self.left = None
        if self.parent._modules.get(self.name) is self.new:
            self.parent._modules[self.name] = self._original
        else:
            self.left = f"submodule {self.name} of {type(self.parent).__name__}"
        _release(self.parent, self)


class ProcessorSwap:
    """``module.set_processor(wrapper)`` where ``wrapper.diffattn_patch.original`` is the processor it
    delegates to; while swapped, that original's ``_attention_backend`` is forced to native (flash and
    sage bypass SDPA, so the interception would never see the call). Undo restores both."""

    def __init__(self, module: nn.Module, wrapper: Any) -> None:
        self.module, self.wrapper = module, wrapper
        self.original = wrapper.diffattn_patch.original
        self._backend: tuple[bool, Any] = (False, None)
        self.left: str | None = None

    def apply(self) -> None:
        had = hasattr(self.original, "_attention_backend")
        self._backend = (had, getattr(self.original, "_attention_backend", None))
        _set_processor(self.module, self.wrapper)
        if had:
            self.original._attention_backend = _native_backend()

    def undo(self) -> None:
        self.left = None
        had, value = self._backend
        if had:
            self.original._attention_backend = value
        current = self.module.processor
        if getattr(current, "diffattn_patch", None) is not None and current.diffattn_patch.original is self.original:
            _set_processor(self.module, self.original)
        else:  # named, never the module's repr (every layer of the block, many lines per module)
            name = getattr(self.wrapper.diffattn_patch, "name", None) or type(self.module).__name__
            self.left = f"the processor of {name}"


def _set_processor(module: nn.Module, processor: Any) -> None:
    """``module.set_processor``; plain assignment for attention classes without it (Mochi; layout, issue 10)."""
    if hasattr(module, "set_processor"):
        module.set_processor(processor)
    else:
        module.processor = processor


def _native_backend() -> Any:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return AttentionBackendName.NATIVE


__all__ = [
    "ForwardHook",
    "ForwardPreHook",
    "ProcessorSwap",
    "SetAttr",
    "SwapSubmodule",
    "UndoRecord",
    "apply_all",
    "undo_all",
]
