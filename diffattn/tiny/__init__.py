"""Random-weight test pipelines and denoisers, built offline from configs (tests, benchmarks, the CLI's
``--model tiny-…``). Not the trained embedded model: that is `diffattn.pipelines.tiny_shapes`.

``specs``: one `TinySpec` per pipeline family and the public builders; ``core`` / ``newer``: the builders;
``encoders``: in-memory tokenizers and tiny text encoders; ``denoisers``: a tiny config and inputs for
every diffusers denoiser class.
"""

from .specs import *  # noqa: F403  (the public names, listed once in specs.__all__)
from .specs import __all__  # noqa: F401
