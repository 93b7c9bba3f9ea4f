"""Kept for the documented import path: the scorer lives in `diffattn.pipelines.tiny_shapes.scorer`."""

from .pipelines.tiny_shapes.scorer import *  # noqa: F403
from .pipelines.tiny_shapes.scorer import ShapeScorer, load_scorer, pattern_fid, score  # noqa: F401
