"""The attention call itself: a wrapped processor runs the original one under a ``TorchFunctionMode``
that routes its one ``F.scaled_dot_product_attention`` call to the method, after splitting the
sequence into the token grid and dense tokens (`split`); anything unexpected falls back to dense, loudly, counted."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ..kernels import record_paths
from ..layout import SELF, ModuleRole
from ..methods import AttendCall, AttentionMethod, ModuleCall
from ..methods.lifecycle import AttentionKind, InnerAttention
from .context_parallel import gathered_order, ulysses_of
from .runtime import CallStats
from .split import SeqCat, dense_part, key_padding, keys_only_rows, seq_cat, split_of

if TYPE_CHECKING:
    from .runtime import _Runtime

logger = logging.getLogger("diffattn")


class _Interceptor(TorchFunctionMode):
    """Routes the one SDPA call of a wrapped processor to the method."""

    def __init__(self, target: _PatchedAttention) -> None:
        super().__init__()
        self.target = target
        self.cats: list[SeqCat] = []  # this run's sequence concatenations (per run: threads share the module)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.target.attend(func, args, kwargs, self.cats)
        out = func(*args, **kwargs)
        if func is torch.cat:  # layout (issue 10): how the processor joins text and image tokens
            cat = seq_cat(args, kwargs, out)
            if cat is not None:
                self.cats.append(cat)
        return out


_SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
#: a method's function for the attention calls inside a cross-attention processor (`ModuleCall.route_attention`)
_Route = Callable[[InnerAttention], Tensor]


class _CrossRouter(TorchFunctionMode):
    """Hands each SDPA call of a cross-attention processor to the method's `ModuleCall.route_attention` function,
    as an `InnerAttention` on ``[B, S, H, D]`` views; its ``[B, S, H, D]`` answer goes back as ``[B, H, S, D]``."""

    def __init__(self, route: _Route) -> None:
        super().__init__()
        self.route = route
        self.index = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        p = dict(zip(_SDPA_PARAMS, args))
        p.update(kwargs)
        q, k, v = p.pop("query"), p.pop("key"), p.pop("value")  # [B, H, S, D]
        batch = q.shape[0]

        def compute(rows: Sequence[int] | None = None) -> Tensor:
            if rows is None:
                return func(q, k, v, **p).transpose(1, 2)
            index = torch.as_tensor(list(rows), dtype=torch.long, device=q.device)
            sliced = dict(p)
            mask = p.get("attn_mask")
            if mask is not None and mask.dim() == 4 and mask.shape[0] == batch:
                sliced["attn_mask"] = mask.index_select(0, index)
            return func(*(t.index_select(0, index) for t in (q, k, v)), **sliced).transpose(1, 2)

        inner = InnerAttention(self.index, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), compute)
        self.index += 1
        out = self.route(inner)  # [B, S, H, D]
        expected = (q.shape[0], q.shape[2], q.shape[1], v.shape[3])
        if tuple(out.shape) != expected:
            raise RuntimeError(f"attention route returned shape {tuple(out.shape)}, expected {expected} [B, S, H, D]")
        return out.transpose(1, 2)


class _PatchedAttention:
    """Wrapper processor state and logic; the callable shell is `processors.make_wrapper`'s.

    ``kind="self"``: the SDPA call goes to the method's `attend`; ``kind="cross"``: the processor runs
    as is (cross-attention is wrapped only so a method's `process` can see, replace or skip it).
    """

    def __init__(
        self,
        name: str,
        original: Any,
        runtime: _Runtime,
        index: int = 0,
        kind: AttentionKind = "self",
        role: ModuleRole | None = SELF,
        method: AttentionMethod | None = None,
    ) -> None:
        self.name = name
        #: the method this module runs: the runtime's, or its own (1-D GNA on temporal attention)
        self.method = method or runtime.method
        self.index = index
        self.kind = kind
        self.role = role or SELF  # layout (issue 10): the grid this module attends over
        self.original = original
        self.runtime = runtime
        self.signature = inspect.signature(original.__call__)
        runtime.stats.setdefault(name, CallStats(kind="temporal" if self.role.kind == "temporal" else kind))

    def run(self, *args: Any, **kwargs: Any) -> Any:
        ulysses_of(getattr(self.original, "_parallel_config", None))  # ring: a clear error before any collective
        rt = self.runtime
        if rt.processes and rt.active and self.method is rt.method:
            return self._process(args, kwargs)
        return self._call(args, kwargs)

    def _call(self, args: tuple, kwargs: dict[str, Any], route: _Route | None = None) -> Any:
        if self.kind == "cross":
            self.runtime.stats[self.name].cross += 1
            if route is None:
                return self.original(*args, **kwargs)
            with _CrossRouter(route):
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
            return self._call(again.args, again.kwargs, call.attention_route)

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

    def attend(self, func: Callable, args: tuple, kwargs: dict[str, Any], cats: Sequence[SeqCat] = ()) -> Tensor:
        """Replace ``F.scaled_dot_product_attention(q, k, v, ...)`` on ``[B, H, S, D]`` tensors; ``cats``: the
        sequence concatenations the processor made before it."""
        rt = self.runtime
        p = dict(zip(_SDPA_PARAMS, args))
        p.update(kwargs)
        q, k, v = p["query"], p["key"], p["value"]
        if self.method.passthrough or not rt.active:
            rt.stats[self.name].dense += 1
            return func(*args, **kwargs)
        # layout (issue 10): grouped-query heads, image-only queries over image + dense keys, masks
        # that are the same for every image query
        hq, hk = q.shape[1], k.shape[1]
        if hq != hk and (hq % hk or v.shape[1] != hk):
            return self._fallback(func, args, kwargs, f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in heads")
        if p.get("is_causal") or p.get("dropout_p", 0.0):
            return self._fallback(func, args, kwargs, "causal or dropout attention")
        seq = k.shape[-2]
        split = split_of(rt, self.role, cats, seq)
        if isinstance(split, str):
            return self._fallback(func, args, kwargs, split)
        perm = None
        ulysses = ulysses_of(getattr(self.original, "_parallel_config", None))
        if ulysses is not None and split.dense_len and q.shape[-2] == seq:
            text_len, text_first = split.dense_len, split.image.start > 0
            if not rt.text_split or (text_first and split.image.stop < seq):
                return self._fallback(
                    func, args, kwargs,
                    "under context parallelism the text is not split per rank along its sequence (or sits on both "
                    "sides of the grid); the order of the gathered joint sequence is unknown",
                )
            perm = gathered_order(text_len, seq - text_len, text_first, ulysses)
            if perm is None:
                return self._fallback(
                    func, args, kwargs,
                    f"{text_len} text and {seq - text_len} image tokens cannot be split into "
                    f"{ulysses.degree} chunks as diffusers does",
                )
            # Ulysses concatenated the ranks' [txt_r, img_r] chunks: back to the model's order (the
            # split above is already in that order: the processor's own concatenations were per rank)
            perm = perm.to(q.device)
            q, k, v = (t.index_select(2, perm) for t in (q, k, v))
            mask = p.get("attn_mask")
            if mask is not None and mask.shape[-1] == seq:
                p["attn_mask"] = mask.index_select(-1, perm)
        grid, img, dense = split.grid, split.image, split.dense
        q_rows = seq
        keys_only = None  # rows of keys without queries (FLUX.2's KV modes: references attended apart or cached)
        if q.shape[-2] != seq and q.shape[-2] != img.stop - img.start:
            keys_only = keys_only_rows(cats, seq, q.shape[-2], img) if perm is None else None
            if keys_only is None:
                return self._fallback(
                    func, args, kwargs, f"{q.shape[-2]} queries are neither the {seq} keys nor the grid {grid}"
                )
            hole = q.new_zeros((*q.shape[:2], keys_only.stop - keys_only.start, q.shape[3]))
            q = torch.cat([q[:, :, : keys_only.start], hole, q[:, :, keys_only.start :]], dim=2)  # [B, H, S, D]
        elif q.shape[-2] != seq:  # queries of the image only (the processor joins dense tokens to k, v alone)
            q_rows = q.shape[-2]
            q = F.pad(q, (0, 0, img.start, seq - img.stop))  # [B, H, S, D]; only the image rows are read
        key_valid = key_padding(p.get("attn_mask"), q.shape[0], seq, img)
        if key_valid is False:
            return self._fallback(
                func, args, kwargs, f"attention mask of shape {tuple(p['attn_mask'].shape)} is not a key-padding mask"
            )
        if isinstance(key_valid, Tensor) and not bool(key_valid[:, img].all()):
            return self._fallback(func, args, kwargs, "the attention mask hides image tokens")
        if hq != hk:
            k, v = (t.repeat_interleave(hq // hk, dim=1) for t in (k, v))
        qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # [B, S, H, D] views
        call = AttendCall(
            grid=grid,
            extra_k=dense_part(ks, 1, dense) if dense else None,
            extra_v=dense_part(vs, 1, dense) if dense else None,
            extra_mask=dense_part(key_valid, 1, dense) if dense and isinstance(key_valid, Tensor) else None,
            scale=p.get("scale"),
            backend=rt.backend,
            layer=self.name,
            layer_index=self.index,
            timestep=rt.timestep,
            step=rt.step,
            branch=rt.branch,
            state=rt.layer_state(self.name),
            layout=rt.layout,
        )
        with record_paths() as paths:
            out_img = self.method.attend(qs[:, img], ks[:, img], vs[:, img], call).transpose(1, 2)  # [B, H, S_img, D]
        stats = rt.stats[self.name]
        stats.sparse, stats.grid, stats.extra = stats.sparse + 1, grid, seq - (img.stop - img.start)
        path = "+".join(dict.fromkeys(paths)) or "-"
        stats.paths[path] = stats.paths.get(path, 0) + 1
        # the latent stream (grid plus in-stream references) is only recorded for the top-level grid
        layout = rt.layout
        stream = layout.stream_len if layout.stream_len is not None and grid == layout.grid else math.prod(grid)
        stats.text = seq - stream
        if not dense or q_rows != seq:
            return out_img
        pieces = [(img.start, out_img)]  # (first row, [B, H, rows, D]) in any order
        # reference grids (layout, issue 23): their queries attend their own grid's neighbourhood plus every other
        # token densely, the rule the grid's queries follow with the references among their dense keys
        sparse_refs = []
        for rows, ref_grid in split.refs:
            if keys_only is not None and rows.start < keys_only.stop and keys_only.start < rows.stop:
                continue  # no queries of its own in this call
            valid = key_padding(p.get("attn_mask"), q.shape[0], seq, rows)
            if valid is False or (isinstance(valid, Tensor) and not bool(valid[:, rows].all())):
                continue  # a mask that treats the reference's rows apart, or hides them: it stays dense
            outside = split.outside(rows)
            ref_call = dataclasses.replace(
                call,
                grid=ref_grid,
                extra_k=dense_part(ks, 1, outside),
                extra_v=dense_part(vs, 1, outside),
                extra_mask=dense_part(valid, 1, outside) if isinstance(valid, Tensor) else None,
            )
            out_ref = self.method.attend(qs[:, rows], ks[:, rows], vs[:, rows], ref_call)
            pieces.append((rows.start, out_ref.transpose(1, 2)))
            sparse_refs.append(rows)
        # dense queries (text, registers, references without a grid) attend every key, with the model's own mask
        queries = split.outside(split.image, *sparse_refs, *([keys_only] if keys_only is not None else []))
        if queries:
            mask = p.get("attn_mask")
            if mask is not None and mask.dim() >= 2 and mask.shape[-2] == seq:  # per-query rows: keep the dense ones
                mask = dense_part(mask, mask.dim() - 2, queries)
            dense_kwargs = {k2: p[k2] for k2 in ("scale",) if p.get(k2) is not None}
            out_dense = func(dense_part(q, 2, queries), k, v, attn_mask=mask, **dense_kwargs)
            at = 0
            for r in queries:
                n = r.stop - r.start
                pieces.append((r.start, out_dense[:, :, at : at + n]))
                at += n
        out = torch.cat([t for _, t in sorted(pieces, key=lambda piece: piece[0]) if t.shape[2]], dim=2)
        return out if perm is None else out.index_select(2, torch.argsort(perm))  # back to the gathered order
