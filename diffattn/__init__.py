"""diffattn: training-free sparse attention for Hugging Face diffusers pipelines.

import diffattn
handle = diffattn.apply_attention(pipe, "gna", window=(16, 16), stride=(4, 4))
image = pipe(prompt).images[0]
handle.remove()
"""

from . import functional
from .calibration import CalibrationTarget, Plan, calibrate
from .methods import list_methods
from .models import supported_models
from .patch import AttentionHandle, apply_attention, attention, remove_attention

__version__ = "0.1.0"


def tiny_model(path=None, **kwargs):  # noqa: ANN001, ANN201 - signature documented in pipelines.tiny_shapes
    """The embedded trained tiny shapes pipeline (see :func:`diffattn.pipelines.tiny_shapes.tiny_model`)."""
    from .pipelines.tiny_shapes import tiny_model as load

    return load(path, **kwargs)


__all__ = [
    "AttentionHandle",
    "CalibrationTarget",
    "Plan",
    "apply_attention",
    "attention",
    "calibrate",
    "functional",
    "list_methods",
    "remove_attention",
    "supported_models",
    "tiny_model",
]
