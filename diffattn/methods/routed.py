"""A calibrated `Plan` (per attention module and stretch of denoising steps: a method and its knobs) and
`PlanMethod`, the method that runs one: each self-attention call is routed by its module (``call.layer``)
and timestep (``call.timestep``) to the sub-method its plan entry names. `diffattn.calibrate` builds plans;
``apply_attention(pipe, plan)`` (or ``config=plan``, or a path to a plan JSON file) installs one through the
ordinary atomic handle.

Why route by timestep and not by step index: the timestep is the noise level, which is what a stretch of
the schedule means; it is known for every denoiser call (a bare denoiser too), and it does not depend on the
number of steps the plan is later run with. A stretch is stored as the calibration timesteps it covered; a call
falls in the stretch whose timesteps are nearest (edges halfway between stretches).

A plan records the model it was built for (per denoiser: its class and a hash of its config) and refuses
another model: its measurements say nothing about other weights.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..models.denoisers import denoisers_of
from .base import AttendCall, AttentionMethod, FlopBound
from .knobs import format_knobs, parse_knobs
from .registry import get_method

logger = logging.getLogger("diffattn")

FORMAT = "diffattn.plan/1"
#: sub-methods a plan may route to: methods whose `attend` is a per-call function of q, k, v (no denoiser
#: wrapping, no cross-attention, no per-generation state)
ROUTABLE = ("dense", "gna", "msw", "proxy")

Knobs = tuple[tuple[str, Any], ...]


def config_hash(denoiser: nn.Module) -> str:
    """First 16 hex digits of the sha256 of a denoiser's config (diffusers ``config``; keys starting with ``_``,
    such as the diffusers version and the load path, left out), or of its class name if it has no config."""
    config = getattr(denoiser, "config", None)
    items = {k: v for k, v in dict(config).items() if not str(k).startswith("_")} if config is not None else {}
    text = json.dumps(items, sort_keys=True, default=str)
    return hashlib.sha256(f"{type(denoiser).__name__}|{text}".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ModelSignature:
    """The denoiser a plan was built for.

    attr: its pipeline attribute (``unet``, ``transformer``, ``transformer_2``), or ``""`` for a bare denoiser.
    cls: its class name. config_sha: `config_hash` of it.
    """

    attr: str
    cls: str
    config_sha: str

    @classmethod
    def of(cls, attr: str, denoiser: nn.Module) -> ModelSignature:
        return cls(attr, type(denoiser).__name__, config_hash(denoiser))

    def matches(self, denoiser: nn.Module) -> bool:
        return type(denoiser).__name__ == self.cls and config_hash(denoiser) == self.config_sha

    def __str__(self) -> str:
        where = f" at '{self.attr}'" if self.attr else ""
        return f"{self.cls}{where} (config {self.config_sha})"


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A stretch of the denoising schedule.

    steps: ``(start, stop)``, half-open, among the distinct timesteps of the calibration run (0 = the noisiest).
    timesteps: the first (highest) and last (lowest) calibration timestep in it, in scheduler units.
    """

    steps: tuple[int, int]
    timesteps: tuple[float, float]

    def __post_init__(self) -> None:
        a, b = self.steps
        if not (isinstance(a, int) and isinstance(b, int) and 0 <= a < b):
            raise ValueError(f"bucket steps={self.steps!r} must be (start, stop) ints with 0 <= start < stop")
        hi, lo = self.timesteps
        if not (math.isfinite(hi) and math.isfinite(lo) and hi >= lo):
            raise ValueError(f"bucket timesteps={self.timesteps!r} must be finite (first, last) with first >= last")

    @property
    def label(self) -> str:
        a, b = self.steps
        return f"steps {a}-{b - 1}" if b - a > 1 else f"step {a}"


@dataclasses.dataclass(frozen=True)
class PlanEntry:
    """What one module does in one bucket, and the evidence for it.

    module: the module's qualified name as the patcher names it (``transformer.transformer_blocks.0.attn``).
    bucket: index into `Plan.buckets`.
    method, knobs: a method of `ROUTABLE` and its knobs (``"dense"``: the model's own attention).
    grid: the token grid the module attended during calibration.
    error: the largest relative output error ``||o - o_dense|| / ||o_dense||`` of one sampled call, or None.
    mass: the smallest mean kept attention mass ``exp(lse - lse_dense)`` of one sampled call, or None
        (patterns that are not a subset of dense attention, e.g. proxies, have none).
    bound: the predicted attention speedup bound of this choice at ``grid`` (1.0 for dense).
    attention_s: dense attention seconds of this module in this bucket during calibration (the cost weight).
    calls: how many calls were measured.
    """

    module: str
    bucket: int
    method: str
    knobs: Knobs = ()
    grid: tuple[int, ...] = ()
    error: float | None = None
    mass: float | None = None
    bound: float = 1.0
    attention_s: float = 0.0
    calls: int = 0

    def __post_init__(self) -> None:
        if self.method not in ROUTABLE:
            raise ValueError(
                f"plan entry {self.module!r}: method {self.method!r} cannot be planned; use one of {ROUTABLE}"
            )
        knobs = tuple(sorted((str(k), v) for k, v in dict(self.knobs).items() if v is not None))
        object.__setattr__(self, "knobs", knobs)
        object.__setattr__(self, "grid", tuple(self.grid))
        cls = get_method(self.method)
        cls.make_config(None, **dict(knobs))  # a ValueError / TypeError naming a bad knob
        for name in ("error", "mass"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"plan entry {self.module!r}: {name}={value!r} must be a finite number >= 0 or None")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise ValueError(f"plan entry {self.module!r}: bound={self.bound!r} must be a finite number > 0")

    @property
    def sparse(self) -> bool:
        return self.method != "dense"

    @property
    def choice(self) -> str:
        """``gna window=8,8 stride=1`` or ``dense``."""
        return " ".join(filter(None, [self.method, format_knobs(self.knobs)]))


@dataclasses.dataclass(frozen=True)
class Plan:
    """A calibrated attention plan: per self-attention module and bucket of steps, a method and its knobs.

    model: the denoiser(s) it was built for; buckets: the stretches of the schedule, noisiest first;
    entries: one per (module, bucket), every module covering every bucket;
    target: the calibration target as ``(name, value)`` items; attention_share: the dense attention share of
    step time measured during calibration; attention_bound / end_to_end_bound: the predicted bounds of the
    plan (attention part, and Amdahl over the step); satisfied: every requested target was met;
    notes: what the user must know (nothing met the target, the budget ran out, ...); info: calibration facts.
    """

    model: tuple[ModelSignature, ...]
    buckets: tuple[Bucket, ...]
    entries: tuple[PlanEntry, ...]
    target: tuple[tuple[str, Any], ...] = ()
    attention_share: float = 0.0
    attention_bound: float = 1.0
    end_to_end_bound: float = 1.0
    satisfied: bool = True
    notes: tuple[str, ...] = ()
    info: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        for name in ("model", "buckets", "entries", "notes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "target", tuple((str(k), v) for k, v in self.target))
        object.__setattr__(self, "info", tuple((str(k), v) for k, v in self.info))
        if not self.model:
            raise ValueError("a plan needs the signature of the model it was built for (model=...)")
        if not self.buckets:
            raise ValueError("a plan needs at least one bucket of steps")
        if any(b.timesteps[0] >= a.timesteps[1] for a, b in zip(self.buckets, self.buckets[1:])):
            raise ValueError(
                "plan buckets must be disjoint stretches of the schedule, noisiest (highest timestep) first"
            )
        seen: dict[str, set[int]] = {}
        for e in self.entries:
            if not 0 <= e.bucket < len(self.buckets):
                raise ValueError(f"plan entry {e.module!r}: bucket {e.bucket} is not one of 0..{len(self.buckets) - 1}")
            if e.bucket in seen.setdefault(e.module, set()):
                raise ValueError(f"plan entry {e.module!r}: bucket {e.bucket} is given twice")
            seen[e.module].add(e.bucket)
        for module, buckets in seen.items():
            if len(buckets) != len(self.buckets):
                missing = sorted(set(range(len(self.buckets))) - buckets)
                raise ValueError(f"plan module {module!r} has no entry for bucket(s) {missing}")
        attrs = [m.attr for m in self.model]
        if len(set(attrs)) != len(attrs):
            raise ValueError(f"plan model signatures repeat a denoiser attribute: {attrs}")
        for value in (self.attention_share, self.attention_bound, self.end_to_end_bound):
            if not math.isfinite(value):
                raise ValueError(f"plan bounds and share must be finite, got {value!r}")

    # --- reading ----------------------------------------------------------------------------------------
    @property
    def modules(self) -> list[str]:
        """Every module the plan covers, in entry order."""
        return list(dict.fromkeys(e.module for e in self.entries))

    @property
    def sparse_modules(self) -> list[str]:
        """Modules that run a sparse method in at least one bucket (the ones `apply_attention` patches)."""
        return list(dict.fromkeys(e.module for e in self.entries if e.sparse))

    @functools.cached_property
    def _by_key(self) -> dict[tuple[str, int], PlanEntry]:
        return {(e.module, e.bucket): e for e in self.entries}

    @functools.cached_property
    def _negated_edges(self) -> list[float]:
        # descending timesteps: edges[i] separates bucket i (above) from bucket i + 1 (below); negated for bisect
        return [-(a.timesteps[1] + b.timesteps[0]) / 2 for a, b in zip(self.buckets, self.buckets[1:])]

    def entry(self, module: str, bucket: int) -> PlanEntry:
        """The entry of ``module`` in ``bucket`` (read on every attention call: a dict lookup)."""
        try:
            return self._by_key[module, bucket]
        except KeyError:
            raise KeyError(f"the plan has no entry for module {module!r}, bucket {bucket}") from None

    def bucket_of(self, timestep: float | None) -> int:
        """The bucket of a call at ``timestep`` (edges halfway between the buckets' calibration timesteps)."""
        if len(self.buckets) == 1:
            return 0
        if timestep is None:
            raise RuntimeError(
                "this plan varies with the denoising step but the denoiser call has no readable timestep; "
                "apply a single-bucket plan (calibrate with step_buckets=1)"
            )
        return bisect.bisect_left(self._negated_edges, -float(timestep))

    # --- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": [dataclasses.asdict(m) for m in self.model],
            "target": dict(self.target),
            "satisfied": self.satisfied,
            "attention_share": self.attention_share,
            "attention_bound": self.attention_bound,
            "end_to_end_bound": self.end_to_end_bound,
            "notes": list(self.notes),
            "buckets": [{"steps": list(b.steps), "timesteps": list(b.timesteps)} for b in self.buckets],
            "entries": [
                {
                    "module": e.module, "bucket": e.bucket, "method": e.method,
                    "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in e.knobs},
                    "grid": list(e.grid), "error": e.error, "mass": e.mass, "bound": e.bound,
                    "attention_s": e.attention_s, "calls": e.calls,
                }
                for e in self.entries
            ],
            "info": dict(self.info),
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a diffattn plan: expected format {FORMAT!r}, found {found!r}")
        try:
            entries = tuple(
                PlanEntry(
                    module=e["module"], bucket=e["bucket"], method=e["method"],
                    knobs=tuple(parse_knobs(e["method"], e.get("knobs") or {}).items()), grid=tuple(e["grid"]),
                    error=e["error"], mass=e["mass"], bound=e["bound"], attention_s=e["attention_s"], calls=e["calls"],
                )
                for e in d["entries"]
            )  # fmt: skip
            return cls(
                model=tuple(ModelSignature(**m) for m in d["model"]),
                buckets=tuple(Bucket(tuple(b["steps"]), tuple(b["timesteps"])) for b in d["buckets"]),
                entries=entries,
                target=tuple((k, _tupled(v)) for k, v in d["target"].items()),
                attention_share=d["attention_share"],
                attention_bound=d["attention_bound"],
                end_to_end_bound=d["end_to_end_bound"],
                satisfied=d["satisfied"],
                notes=tuple(d["notes"]),
                info=tuple((k, _tupled(v)) for k, v in d["info"].items()),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed diffattn plan: {type(e).__name__}: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json())
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"plan file {str(p)!r} does not exist")
        try:
            return cls.from_json(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"plan file {str(p)!r} is not JSON: {e}") from e

    # --- text -------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """A human-readable table: one row per module, one column per bucket (choice, error, mass)."""
        lines = [
            f"diffattn plan for {', '.join(map(str, self.model))}: {len(self.sparse_modules)} of {len(self.modules)} "
            f"modules sparse; predicted bounds: attention {self.attention_bound:.2f}x, end-to-end "
            f"{self.end_to_end_bound:.2f}x (dense attention share {self.attention_share:.0%})",
            "target: " + (", ".join(f"{k}={v}" for k, v in self.target) or "-")
            + ("" if self.satisfied else "  (NOT met, see notes)"),
        ]
        head = ["module", "grid"] + [f"{b.label} (t {b.timesteps[0]:.0f}-{b.timesteps[1]:.0f})" for b in self.buckets]
        rows = []
        for module in self.modules:
            cells = [module, "x".join(map(str, self.entry(module, 0).grid)) or "-"]
            for i in range(len(self.buckets)):
                e = self.entry(module, i)
                evidence = []
                if e.error is not None:
                    evidence.append(f"err {e.error:.3f}")
                if e.mass is not None:
                    evidence.append(f"mass {e.mass:.2f}")
                bound = f" {e.bound:.1f}x" if e.sparse else ""
                cells.append(f"{e.choice}{bound}" + (f" ({', '.join(evidence)})" if evidence else ""))
            rows.append(cells)
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Plan({len(self.sparse_modules)}/{len(self.modules)} modules sparse x {len(self.buckets)} buckets, "
            f"bound {self.end_to_end_bound:.2f}x, for {', '.join(m.cls for m in self.model)})"
        )


def _tupled(value: Any) -> Any:
    """JSON lists back to tuples (plans hold only tuples: frozen and hashable)."""
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def as_plan(method: Any, config: Any = None) -> Plan | None:
    """The plan ``apply_attention`` was given (as ``method``, as ``config`` or as a path to a ``.json`` plan
    file), or None when it was given a method name."""
    if isinstance(method, Plan):
        if config is not None:
            raise TypeError("a plan takes no config")
        return method
    if isinstance(config, Plan):
        if method not in (None, PlanMethod.name):
            raise TypeError(f"config=<Plan> sets every method itself; got method={method!r} too (leave it out)")
        return config
    if isinstance(method, os.PathLike) or (isinstance(method, str) and method.endswith(".json")):
        if config is not None:
            raise TypeError(f"a plan file ({method!r}) takes no config")
        return Plan.load(method)
    return None


class PlanMethod(AttentionMethod):
    """Runs a `Plan`: each call goes to the sub-method of its (module, bucket) entry. Not registered
    (it is what a plan becomes); build it with `for_target`, which checks the model."""

    name = "plan"
    Config = Plan

    def __init__(self, config: Plan, names: dict[str, str] | None = None) -> None:
        super().__init__(config)
        #: the target's qualified module name -> the plan's module name
        self.names = names if names is not None else {m: m for m in config.modules}
        methods: dict[tuple[str, Knobs], AttentionMethod] = {}
        self.routes: dict[tuple[str, int], AttentionMethod] = {}
        self._warned: set[str] = set()
        for e in config.entries:
            key = (e.method, e.knobs)
            if key not in methods:
                cls = get_method(e.method)
                methods[key] = cls(cls.make_config(None, **dict(e.knobs)))
            self.routes[e.module, e.bucket] = methods[key]

    @classmethod
    def for_target(cls, plan: Plan, target: Any) -> PlanMethod:
        """A `PlanMethod` for ``target`` (pipeline or bare denoiser); a ValueError naming the model the plan was
        built for if ``target`` holds another one, or if a module of the plan is not in it."""
        found = denoisers_of(target)
        names: dict[str, str] = {}
        for sig in plan.model:
            matches = [(a, d) for a, d in found if (a == sig.attr or not a or not sig.attr) and sig.matches(d)]
            if not matches:
                have = ", ".join(str(ModelSignature.of(a, d)) for a, d in found)
                raise ValueError(
                    f"this plan was calibrated for {sig}, but {type(target).__name__} holds {have}: a plan only "
                    "applies to the model it was measured on; calibrate this one (diffattn.calibrate / "
                    "`diffattn calibrate`)"
                )
            attr, denoiser = matches[0]
            modules = {n for n, _ in denoiser.named_modules()}
            own = [m for m in plan.modules if _owner(m, plan.model) == sig.attr]
            for m in own:
                local = m[len(sig.attr) + 1 :] if sig.attr else m
                if local not in modules:
                    raise ValueError(f"plan module {m!r} is not a module of {sig} (a plan for another revision?)")
                names[f"{attr}.{local}" if attr else local] = m
        return cls(plan, names)

    @property
    def selects(self) -> Callable[[str], bool]:
        """The ``layers=`` predicate: modules that run sparse in some bucket (all-dense modules keep the model's
        own processor, untouched)."""
        sparse = set(self.config.sparse_modules)
        return lambda name: self.names.get(name) in sparse

    def route(self, layer: str, timestep: float | None) -> AttentionMethod:
        module = self.names.get(layer)
        if module is None:
            raise RuntimeError(f"{layer!r} is not a module of this plan")
        return self.routes[module, self.config.bucket_of(timestep)]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        self._check_grid(call)
        return self.route(call.layer, call.timestep).attend(q, k, v, call)

    def _check_grid(self, call: AttendCall) -> None:
        """Warn once per module run at another grid than calibrated: the windows still apply (clamped), but the
        measurements that chose them were taken at the calibration size."""
        module = self.names.get(call.layer)
        if module is None or module in self._warned:
            return
        grid = self.config.entry(module, 0).grid
        if grid and tuple(call.grid) != grid:
            self._warned.add(module)
            logger.warning(
                "diffattn: %s attends a %s grid but the plan was calibrated at %s: its choices are not measured at "
                "this size (calibrate at this size)", call.layer, tuple(call.grid), grid,
            )

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        return self.route(call.layer, call.timestep).oracle(q, k, v, call)

    def describe_module(self, layer: str) -> str:
        """``plan: gna window=8,8 | dense``: the module's choice per bucket (for `handle.summary()`)."""
        module = self.names.get(layer, layer)
        return "plan: " + " | ".join(self.config.entry(module, i).choice for i in range(len(self.config.buckets)))

    def describe_plan(self) -> str:
        return self.config.describe()

    def _weighted(self, pairs: Iterable[tuple[float, float]], formula: str) -> FlopBound:
        """Harmonic mean of bounds weighted by dense cost (the attention time they apply to)."""
        pairs = list(pairs)
        total = sum(w for w, _ in pairs)
        if total <= 0:
            return FlopBound(1.0, formula + " (no measured cost: dense)")
        return FlopBound(total / sum(w / b for w, b in pairs), formula)

    def module_flop_bound(self, layer: str, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """FLOP bound of one module over the schedule: its buckets' bounds on ``grid``, weighted by the
        buckets' share of the calibration steps."""
        module = self.names.get(layer, layer)
        pairs = []
        for i, b in enumerate(self.config.buckets):
            sub = self.routes[module, i]
            pairs.append((b.steps[1] - b.steps[0], sub.flop_bound(grid, extra_tokens).value))
        return self._weighted(pairs, f"plan: {len(pairs)} bucket(s) of {module}")

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """FLOP bound of the plan's patched modules as if they all attended ``grid``: their entries' bounds
        weighted by the dense attention seconds each entry was measured with."""
        sparse = set(self.config.sparse_modules)
        pairs = [
            (max(e.attention_s, 1e-12), self.routes[e.module, e.bucket].flop_bound(grid, extra_tokens).value)
            for e in self.config.entries
            if e.module in sparse
        ]
        return self._weighted(pairs, f"plan: {len(pairs)} (module, bucket) entries")


def _owner(module: str, model: tuple[ModelSignature, ...]) -> str:
    """The attribute of the denoiser a plan module belongs to (its name's first part for pipelines)."""
    for sig in model:
        if sig.attr and module.startswith(sig.attr + "."):
            return sig.attr
    return "" if any(not s.attr for s in model) else model[0].attr
