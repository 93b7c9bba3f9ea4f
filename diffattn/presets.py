"""Kept while the benchmark drivers move: the presets live in `diffattn.patch.presets`."""

from .patch.presets import *  # noqa: F403
from .patch.presets import FAMILIES, PRESETS, Preset, Unsupported, preset_for, resolve_preset, table  # noqa: F401
