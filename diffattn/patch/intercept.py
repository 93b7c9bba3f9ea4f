"""The attention call itself: a wrapped processor runs the original one under a ``TorchFunctionMode``
that routes its one ``F.scaled_dot_product_attention`` call to the method, after splitting the
sequence into image grid and text tokens; anything unexpected falls back to dense, loudly, counted."""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..methods import AttendCall, ModuleCall
from ..methods.lifecycle import AttentionKind
from ..parallel import gathered_order, ulysses_of
from .runtime import CallStats

if TYPE_CHECKING:
    from .runtime import _Runtime

logger = logging.getLogger("diffattn")


class _Interceptor(TorchFunctionMode):
    """Routes the one SDPA call of a wrapped processor to the method."""

    def __init__(self, target: _PatchedAttention) -> None:
        super().__init__()
        self.target = target

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.target.attend(func, args, kwargs)
        return func(*args, **kwargs)


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class _PatchedAttention:
    """Wrapper processor state and logic; the callable shell is `processors.make_wrapper`'s.

    ``kind="self"``: the SDPA call goes to the method's `attend`; ``kind="cross"``: the processor runs
    as is (cross-attention is wrapped only so a method's `process` can see, replace or skip it).
    """

    def __init__(
        self, name: str, original: Any, runtime: _Runtime, index: int = 0, kind: AttentionKind = "self"
    ) -> None:
        self.name = name
        self.index = index
        self.kind = kind
        self.original = original
        self.runtime = runtime
        self.signature = inspect.signature(original.__call__)
        runtime.stats.setdefault(name, CallStats())

    def run(self, *args: Any, **kwargs: Any) -> Any:
        ulysses_of(getattr(self.original, "_parallel_config", None))  # ring: a clear error before any collective
        rt = self.runtime
        if rt.processes and rt.active:
            return self._process(args, kwargs)
        return self._call(args, kwargs)

    def _call(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        if self.kind == "cross":
            self.runtime.stats[self.name].cross += 1
            return self.original(*args, **kwargs)
        with _Interceptor(self):
            return self.original(*args, **kwargs)

    def _process(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Hand this call to the method's `process` with a ``run(**overrides)`` that runs the original."""
        rt = self.runtime
        bound = self.signature.bind(*args, **kwargs)
        ran = False

        def run(**overrides: Any) -> Any:
            nonlocal ran
            ran = True
            unknown = sorted(set(overrides) - set(self.signature.parameters))
            if unknown:
                accepted = list(self.signature.parameters)
                raise TypeError(f"{self.name}: unknown processor argument(s) {unknown}; accepted: {accepted}")
            again = inspect.BoundArguments(self.signature, {**bound.arguments, **overrides})  # type: ignore[arg-type]
            return self._call(again.args, again.kwargs)

        call = ModuleCall(
            layer=self.name,
            layer_index=self.index,
            kind=self.kind,
            step=rt.step,
            timestep=rt.timestep,
            branch=rt.branch,
            state=rt.layer_state(self.name),
            arguments=types.MappingProxyType(dict(bound.arguments)),
        )
        out = rt.method.process(run, call)
        if not ran or call.served_from_cache:
            stats = rt.stats[self.name]
            if self.kind == "cross":
                stats.cross_cached += 1
            else:
                stats.cached += 1
        return out

    def _fallback(self, func: Callable, args: tuple, kwargs: dict, reason: str) -> Tensor:
        rt = self.runtime
        rt.stats[self.name].fallback += 1
        if self.name not in rt.warned:
            rt.warned.add(self.name)
            logger.warning("diffattn: %s falls back to dense attention: %s", self.name, reason)
        return func(*args, **kwargs)

    def attend(self, func: Callable, args: tuple, kwargs: dict[str, Any]) -> Tensor:
        """Replace ``F.scaled_dot_product_attention(q, k, v, ...)`` on ``[B, H, S, D]`` tensors."""
        rt = self.runtime
        p = dict(zip(_SDPA_PARAMS, args))
        p.update(kwargs)
        q, k, v = p["query"], p["key"], p["value"]
        if rt.method.passthrough or not rt.active:
            rt.stats[self.name].dense += 1
            return func(*args, **kwargs)
        layout = rt.layout
        if layout is None:
            return self._fallback(func, args, kwargs, "no token layout recorded for this call")
        if q.shape[-2] != k.shape[-2] or q.shape[1] != k.shape[1]:
            return self._fallback(
                func, args, kwargs, f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in length or heads"
            )
        if p.get("is_causal") or p.get("dropout_p", 0.0):
            return self._fallback(func, args, kwargs, "causal or dropout attention")
        seq = q.shape[-2]
        split = layout.split(seq)
        if split is None:
            return self._fallback(
                func,
                args,
                kwargs,
                f"sequence length {seq} matches neither the grid {layout.grid} "
                f"nor it plus {layout.text_len} text tokens",
            )
        grid, start, text_len = split
        perm = None
        ulysses = ulysses_of(getattr(self.original, "_parallel_config", None))
        if ulysses is not None and text_len:
            if not rt.text_split:
                return self._fallback(
                    func,
                    args,
                    kwargs,
                    "under context parallelism the text is not split per rank along its sequence; "
                    "the order of the gathered joint sequence is unknown",
                )
            perm = gathered_order(text_len, seq - text_len, start > 0, ulysses)
            if perm is None:
                return self._fallback(
                    func,
                    args,
                    kwargs,
                    f"{text_len} text and {seq - text_len} image tokens cannot be split into "
                    f"{ulysses.degree} chunks as diffusers does",
                )
            # Ulysses concatenated the ranks' [txt_r, img_r] chunks: back to the model's order
            perm = perm.to(q.device)
            q, k, v = (t.index_select(2, perm) for t in (q, k, v))
            mask = p.get("attn_mask")
            if mask is not None and mask.shape[-1] == seq:
                p["attn_mask"] = mask.index_select(-1, perm)
        key_valid = _key_padding(p.get("attn_mask"), q.shape[0], seq)
        if key_valid is False:
            return self._fallback(
                func, args, kwargs, f"attention mask of shape {tuple(p['attn_mask'].shape)} is not a key-padding mask"
            )
        n_img = seq - text_len
        img = slice(start, start + n_img)
        txt = slice(0, start) if start else slice(n_img, seq)
        if isinstance(key_valid, Tensor) and not bool(key_valid[:, img].all()):
            return self._fallback(func, args, kwargs, "the attention mask hides image tokens")
        qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # [B, S, H, D] views
        call = AttendCall(
            grid=grid,
            extra_k=ks[:, txt] if text_len else None,
            extra_v=vs[:, txt] if text_len else None,
            extra_mask=key_valid[:, txt] if text_len and isinstance(key_valid, Tensor) else None,
            scale=p.get("scale"),
            backend=rt.backend,
            layer=self.name,
            layer_index=self.index,
            timestep=rt.timestep,
            step=rt.step,
            branch=rt.branch,
            state=rt.layer_state(self.name),
            layout=layout,
        )
        out_img = rt.method.attend(qs[:, img], ks[:, img], vs[:, img], call).transpose(1, 2)  # [B, H, S_img, D]
        rt.stats[self.name].sparse += 1
        if not text_len:
            return out_img
        # text queries stay dense over every key, with the model's own mask
        text_kwargs = {k2: p[k2] for k2 in ("attn_mask", "scale") if p.get(k2) is not None}
        out_txt = func(q[:, :, txt], k, v, **text_kwargs)
        parts = (out_txt, out_img) if start else (out_img, out_txt)
        out = torch.cat(parts, dim=2)
        return out if perm is None else out.index_select(2, torch.argsort(perm))  # back to the gathered order


def _key_padding(mask: Tensor | None, batch: int, seq: int) -> Tensor | None | bool:
    """``[B, S]`` bool validity of keys if ``mask`` only pads keys; None if no mask; False if the
    mask is of another kind (per-query masks, soft biases)."""
    if mask is None:
        return None
    if mask.shape[-1] != seq or mask.numel() not in (seq, batch * seq):
        return False
    flat = mask.reshape(-1, seq).expand(batch, seq)
    if flat.dtype == torch.bool:
        return flat
    valid = flat == 0
    if not bool((flat[~valid] <= -1e4).all()):
        return False
    return valid
