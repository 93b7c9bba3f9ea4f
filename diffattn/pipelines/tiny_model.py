"""Kept for the documented import path: the embedded model lives in `diffattn.pipelines.tiny_shapes.pipeline`."""

from .tiny_shapes.pipeline import *  # noqa: F403
from .tiny_shapes.pipeline import REBUILD_HINT, RESOLUTION, TRAIN_GRID, WEIGHTS_DIR, TinyShapesPipeline, tiny_model  # noqa: F401
