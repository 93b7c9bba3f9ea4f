"""Test-wide settings: offline hub, deterministic threads, Triton's CPU interpreter."""

import os

# Before anything imports a @triton.jit kernel: tests run the Triton kernel on CPU tensors through the
# interpreter (without it, launches fail with "0 active drivers").
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
