"""Default configs per (method, model family): what ``apply_attention(pipe, method)`` uses when the
user gives no knobs, layers or steps.

Families are the keys of `diffattn.models.family_key`: ``sd`` (SD 1.5 / 2.1), ``sdxl``, ``pixart``
(alpha and Sigma), ``sd3``, ``flux``, ``wan``, ``cogvideox``, ``hunyuanvideo``, ``ltx``.

How a preset combines with what the user passes (see `resolve_preset`):
  - knobs: the preset's knobs are used only when the user gives neither keyword knobs nor a config
    object; any user knob replaces the preset's knobs as a whole (knobs of one method are coupled,
    e.g. a GNA stride must not exceed the window, so they are never mixed);
  - layers, steps: each is taken from the preset when the user passes None;
  - ``preset=False`` in `apply_attention` ignores presets (every self-attention, every step, the
    method's own defaults; a required knob is then a TypeError as before).
A method without an entry for a family simply has no defaults there. An `Unsupported` entry makes
``apply_attention`` raise a ValueError naming the reason.

Windows are in tokens at the resolution each model is usually run at; one config serves every
resolution because GNA/MSW clamp a window larger than the grid to it (dense at low resolution).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from ..models import FAMILIES


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list | tuple) else value


@dataclasses.dataclass(frozen=True)
class Preset:
    """Defaults of one method on one family.

    knobs: the method's config fields (read-only mapping).
    layers: regex searched in patched module names (e.g. ``unet.down_blocks.0...attn1``), None = all.
    steps: ``(start, end)`` int step indices or float fractions of the schedule, None = every step.
    source: where the numbers come from (paper, peer code, or our own choice and why).
    """

    knobs: Mapping[str, Any]
    layers: str | None
    steps: tuple | None
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.knobs, Mapping):
            raise TypeError(f"knobs={self.knobs!r} must be a mapping of knob names to values")
        object.__setattr__(self, "knobs", types.MappingProxyType({k: _freeze(v) for k, v in self.knobs.items()}))
        if self.layers is not None and not isinstance(self.layers, str):
            raise TypeError(f"layers={self.layers!r} must be a regex string or None")
        if self.steps is not None and not isinstance(self.steps, tuple):
            raise TypeError(f"steps={self.steps!r} must be a (start, end) tuple or None")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("source must say where the preset comes from")


@dataclasses.dataclass(frozen=True)
class Unsupported:
    """The method makes no sense on the family; ``reason`` says why (shown in the ValueError)."""

    reason: str


# HiDiffusion applies MSW-MSA only to the highest-resolution transformer blocks of the UNet. On a
# UNet with fewer levels than SD 1.5 (the 2-level tiny-sd) the SD regex matches down_blocks.0 only.
_MSW_SOURCE_UNET = "HiDiffusion: MSW-MSA (2x2 windows, random shift) on the highest-resolution blocks"
_MSW_SOURCE_DIT = (
    "diffattn: HiDiffusion's MSW-MSA (2x2 windows{frame}, random shift) on every block; HiDiffusion itself "
    "is UNet-only, no published DiT recipe"
)
# GNA on models the GNA paper did not tune: blocked-ish windows of half the usual top-level grid,
# with a 16x16 tile-aligned stride (the CPU path's fast case). Lower UNet levels clamp to dense.
_GNA_SOURCE_OWN = "diffattn: window = half the usual {grid} token grid, stride 16 (tile-aligned); not tuned on quality"

_SD_TOP = r"down_blocks\.0\.|up_blocks\.3\."  # the highest-resolution transformer blocks of SD 1.5 / 2.1
_SDXL_TOP = r"down_blocks\.1\.|up_blocks\.1\."  # SDXL's down_blocks.0 has no attention
_IMAGE_DITS = ("pixart", "sd3", "flux")
_PROXY_SOURCE_UNET = (
    "diffattn after PT-DiT: 16x16 windows with mean proxies, shifted on alternate layers, on the highest-resolution "
    "blocks (lower levels of <= 32x32 tokens gain little); no published training-free recipe"
)
_PROXY_SOURCE_DIT = (
    "diffattn after PT-DiT: 16x16 windows, mean proxies, alternate shifted windows; PT-DiT's redundancy analysis "
    "(near-identical attention maps inside small windows) was done on PixArt-alpha"
)
_PROXY_SOURCE_VIDEO = "diffattn: PT-DiT's windows extended to (frames, rows, columns); not tuned on quality"
# AgentSD: agents on steps 0-19 of 50 (then ToMe alone), at the highest-resolution level only
_AGENT_STEPS = (0.0, 0.4)
_AGENT_SOURCE_UNET = "AgentSD: 1/16 agents, scale power 0.3, shortcut 0.075, steps 0-19 of 50, top UNet level"
_AGENT_SOURCE_DIT = (
    "diffattn: AgentSD's settings on the first 40% of steps, on every block (a DiT has no lower-resolution "
    "levels); not tuned on quality"
)

# FreeSwim: window = the training token grid (per frame); F every 2 steps; entropy scale on. Joint-attention
# families are refused by the method's own `supports` (it needs separate cross-attention to cache).
_FREESWIM_SOURCE = "FreeSwim: window = training token grid ({grid}), cache_steps 2, entropy scale"

PRESETS: dict[tuple[str, str], Preset | Unsupported] = {
    # ---- gna ----------------------------------------------------------------------------------
    ("gna", "sd"): Preset({"window": 32, "stride": 16}, None, None, _GNA_SOURCE_OWN.format(grid="SD1.5 512px 64x64")),
    ("gna", "sdxl"): Preset(
        {"window": 32, "stride": 16}, None, None, _GNA_SOURCE_OWN.format(grid="SDXL 1024px top attention level 64x64")
    ),
    ("gna", "pixart"): Preset(
        {"window": 32, "stride": 16}, None, None, _GNA_SOURCE_OWN.format(grid="PixArt-Sigma 1024px 64x64")
    ),
    ("gna", "sd3"): Preset({"window": 32, "stride": 16}, None, None, _GNA_SOURCE_OWN.format(grid="SD3 1024px 64x64")),
    ("gna", "flux"): Preset(
        {"window": (80, 80), "stride": (16, 16)},
        None,
        None,
        "GNA paper: FLUX.1-dev 4K, window 80x80, stride 16x16 (12.3x kernel speedup on H100)",
    ),
    ("gna", "hunyuanvideo"): Preset(
        {"window": (18, 24, 24), "stride": (1, 8, 8)},
        None,
        None,
        "STA / GNA papers: HunyuanVideo 720p (30x48x80 tokens) window 18x24x24; stride (1, 8, 8) is ours",
    ),
    ("gna", "wan"): Preset(
        {"window": (12, 16, 16), "stride": (1, 8, 8)},
        None,
        None,
        "diffattn: Wan 2.1 480p (21x30x52 tokens), window about half of each axis",
    ),
    ("gna", "cogvideox"): Preset(
        {"window": (8, 16, 16), "stride": (1, 8, 8)},
        None,
        None,
        "diffattn: CogVideoX 480x720 (13x30x45 tokens), window about half of each axis",
    ),
    ("gna", "ltx"): Preset(
        {"window": (8, 8, 12), "stride": (1, 4, 4)},
        None,
        None,
        "diffattn: LTX-Video 768x512x121 (16x16x24 tokens), window half of each axis",
    ),
    # ---- freeswim -----------------------------------------------------------------------------
    ("freeswim", "sd"): Preset(
        {"train_grid": 64}, None, None, _FREESWIM_SOURCE.format(grid="SD 1.5 512px latent 64x64")
    ),
    ("freeswim", "sdxl"): Preset(
        {"train_grid": 128}, None, None, _FREESWIM_SOURCE.format(grid="SDXL 1024px latent 128x128")
    ),
    ("freeswim", "pixart"): Preset(
        {"train_grid": 64}, None, None, _FREESWIM_SOURCE.format(grid="PixArt 1024px, 64x64 tokens")
    ),
    ("freeswim", "wan"): Preset(
        {"train_grid": (30, 52)},
        None,
        None,
        _FREESWIM_SOURCE.format(grid="Wan 2.1 480x832: 30x52 tokens; half-widths 15 and 26, window 31x53"),
    ),
    # ---- msw ----------------------------------------------------------------------------------
    ("msw", "sd"): Preset({}, _SD_TOP, None, _MSW_SOURCE_UNET + " (SD 1.5/2.1)"),
    ("msw", "sdxl"): Preset({}, _SDXL_TOP, None, _MSW_SOURCE_UNET + " (SDXL)"),
    **{
        ("msw", fam): Preset({}, None, None, _MSW_SOURCE_DIT.format(frame=""))
        for fam in ("pixart", "sd3", "flux")
    },
    **{
        ("msw", fam): Preset({}, None, None, _MSW_SOURCE_DIT.format(frame=" per frame"))
        for fam in ("wan", "cogvideox", "hunyuanvideo", "ltx")
    },
    # ---- proxy --------------------------------------------------------------------------------
    ("proxy", "sd"): Preset({"window": 16, "shift": True}, _SD_TOP, None, _PROXY_SOURCE_UNET),
    ("proxy", "sdxl"): Preset({"window": 16, "shift": True}, _SDXL_TOP, None, _PROXY_SOURCE_UNET),
    **{("proxy", fam): Preset({"window": 16, "shift": True}, None, None, _PROXY_SOURCE_DIT) for fam in _IMAGE_DITS},
    **{
        ("proxy", fam): Preset({"window": (4, 16, 16), "shift": True}, None, None, _PROXY_SOURCE_VIDEO)
        for fam in ("wan", "cogvideox", "hunyuanvideo")
    },
    ("proxy", "ltx"): Preset(
        {"window": (4, 8, 8), "shift": True}, None, None, _PROXY_SOURCE_VIDEO + "; LTX's grid is already coarse"
    ),
    # ---- agent --------------------------------------------------------------------------------
    ("agent", "sd"): Preset({}, _SD_TOP, _AGENT_STEPS, _AGENT_SOURCE_UNET),
    ("agent", "sdxl"): Preset({}, _SDXL_TOP, _AGENT_STEPS, _AGENT_SOURCE_UNET + "; SDXL's top attention level"),
    **{("agent", fam): Preset({}, None, _AGENT_STEPS, _AGENT_SOURCE_DIT) for fam in _IMAGE_DITS},
    **{
        ("agent", fam): Preset({}, None, _AGENT_STEPS, _AGENT_SOURCE_DIT + "; agents also pool over frames")
        for fam in ("wan", "cogvideox", "hunyuanvideo", "ltx")
    },
}


def preset_for(method: str, family: str) -> Preset | None:
    """The preset of ``method`` on ``family``, None if there is none; a ValueError if unsupported."""
    entry = PRESETS.get((method, family))
    if isinstance(entry, Unsupported):
        raise ValueError(f"method {method!r} is not supported on {family} models: {entry.reason}")
    return entry


def resolve_preset(
    method: str, family: str, knobs: dict[str, Any], config: Any, layers: Any, steps: Any
) -> tuple[dict[str, Any], Any, Any, Preset | None]:
    """``(knobs, layers, steps, preset)`` after filling what the user left unset from the preset."""
    preset = preset_for(method, family)
    if preset is None:
        return knobs, layers, steps, None
    if not knobs and config is None:
        knobs = dict(preset.knobs)
    return knobs, preset.layers if layers is None else layers, preset.steps if steps is None else steps, preset


def table() -> list[dict[str, str]]:
    """Rows (method, family, knobs, layers, steps, source) of every entry, sorted, for display."""
    rows = []
    def order(key: tuple[str, str]) -> tuple[str, int, str]:
        return key[0], FAMILIES.index(key[1]) if key[1] in FAMILIES else len(FAMILIES), key[1]

    for (method, family), entry in sorted(PRESETS.items(), key=lambda item: order(item[0])):
        if isinstance(entry, Unsupported):
            rows.append(dict(method=method, family=family, knobs="-", layers="-", steps="-", source=entry.reason))
            continue
        knobs = ", ".join(f"{k}={v}" for k, v in entry.knobs.items()) or "(method defaults)"
        rows.append(
            dict(
                method=method,
                family=family,
                knobs=knobs,
                layers=entry.layers or "all",
                steps="all" if entry.steps is None else f"{entry.steps[0]}..{entry.steps[1]}",
                source=entry.source,
            )
        )
    return rows


__all__ = ["FAMILIES", "PRESETS", "Preset", "Unsupported", "preset_for", "resolve_preset", "table"]
