"""Old home of the tiny offline pipelines, kept importable: everything lives in `diffattn.tiny`."""

from ..tiny import TINY_MODELS, TINY_SPECS, TinySpec, build_tiny_pipeline, tiny_call_kwargs, tiny_output

__all__ = ["TINY_MODELS", "TINY_SPECS", "TinySpec", "build_tiny_pipeline", "tiny_call_kwargs", "tiny_output"]
