"""Test-wide settings: offline hub, Triton's CPU interpreter, hypothesis profiles.

Hypothesis profiles: ``ci`` (default; fixed seed, no example database, so every run checks the
same cases) and ``thorough`` (10x the examples, random seeds) via ``--hypothesis-profile=thorough``.
"""

import os

# Before anything imports a @triton.jit kernel: tests run the Triton kernel on CPU tensors through the
# interpreter (without it, launches fail with "0 active drivers").
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the environment is set)

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=150, derandomize=True, database=None, **_COMMON)
settings.register_profile("thorough", max_examples=1500, **_COMMON)
settings.load_profile("ci")


import pytest  # noqa: E402

from diffattn.tiny import CORE_TINY_MODELS, build_tiny_pipeline, tiny_output  # noqa: E402


def _built(name: str):
    pipe = build_tiny_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    return pipe, tiny_output(pipe, name)


@pytest.fixture(scope="module", params=CORE_TINY_MODELS)
def tiny(request):
    """(name, pipeline, unpatched output) per tiny family, built once per test module. A module can
    narrow the families with ``@pytest.mark.parametrize("tiny", [...], indirect=True)``."""
    return (request.param, *_built(request.param))


@pytest.fixture(scope="module")
def sd():
    """(tiny SD pipeline, its unpatched output), built once per test module."""
    return _built("tiny-sd")


@pytest.fixture(scope="module")
def wan():
    """(tiny Wan pipeline, its unpatched output), built once per test module."""
    return _built("tiny-wan")
