"""The embedded model: a tiny text-to-image model of six shape classes, trained by us and shipped as package
data (``diffattn/weights/tiny_shapes``), so that everything works offline and shows real pictures.

``pipeline``: `TinyShapesPipeline` and `tiny_model()` (loads the shipped weights, checking their hashes);
``data``: the captions and the renderer of real images; ``scorer``: the shape classifier and pattern-FID;
``job``: sampling with the training recipe, the per-method knobs and the captioned image grid.
"""

from .pipeline import TinyShapesPipeline, tiny_model

__all__ = ["TinyShapesPipeline", "tiny_model"]
