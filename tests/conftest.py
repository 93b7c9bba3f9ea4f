"""Test-wide settings (offline hub, Triton's CPU interpreter, hypothesis profiles), the session cache of built
tiny pipelines, and an autouse check that no test leaves anything patched.

Hypothesis profiles: ``ci`` (default; fixed seed, no example database, so every run checks the
same cases) and ``thorough`` (10x the examples, random seeds) via ``--hypothesis-profile=thorough``.

Tests are in one folder per layer of the package (methods/, kernels/, patch/, models/, pipelines/, report/,
cli/); repository-wide checks (docs, import structure) sit here at the top.
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
import torch  # noqa: E402

from diffattn.models.denoisers import denoisers_of  # noqa: E402
from diffattn.patch import _ACTIVE  # noqa: E402
from diffattn.tiny import CORE_TINY_MODELS, build_tiny_pipeline, tiny_output  # noqa: E402


def _fingerprint(pipe) -> dict:
    """What patching touches on a pipeline, by identity: every attention processor and every hook of its
    denoisers (a test that leaves either changed would hand later tests a different pipeline)."""
    out = {}
    for attr, den in denoisers_of(pipe):
        out[attr] = (
            [(n, id(m.processor)) for n, m in den.named_modules() if hasattr(m, "set_processor")],
            [list(getattr(den, h)) for h in ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks")],
        )
    return out


class PipelineCache:
    """Tiny random-weight pipelines built once per test session (building and running the ten core families
    costs seconds each), with their unpatched outputs per call override. Tests must leave a pipeline as they
    found it; `check` finds one that was left changed and evicts it, so the next test gets a fresh build."""

    def __init__(self) -> None:
        self._pipes: dict[str, tuple[object, dict]] = {}
        self._outputs: dict[tuple, torch.Tensor] = {}
        self.used: set[str] = set()

    def pipe(self, name: str):
        if name not in self._pipes:
            pipe = build_tiny_pipeline(name)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[name] = (pipe, _fingerprint(pipe))
        self.used.add(name)
        return self._pipes[name][0]

    def output(self, name: str, **overrides) -> torch.Tensor:
        """``tiny_output(pipe, name, **overrides)`` of the unpatched cached pipeline, computed once."""
        key = (name, tuple(sorted((k, repr(v)) for k, v in overrides.items())))
        if key not in self._outputs:
            self._outputs[key] = tiny_output(self.pipe(name), name, **overrides)
        return self._outputs[key]

    def _as_built(self, name: str) -> bool:
        pipe, built = self._pipes[name]
        return _fingerprint(pipe) == built

    def check(self) -> list[str]:
        """Names of the pipelines used since the last check that are no longer as built (evicted)."""
        changed = [n for n in sorted(self.used) if n in self._pipes and not self._as_built(n)]
        for name in changed:
            del self._pipes[name]
            self._outputs = {k: v for k, v in self._outputs.items() if k[0] != name}
        self.used.clear()
        return changed


_CACHE = PipelineCache()


@pytest.fixture(scope="session")
def pipelines() -> PipelineCache:
    """The session cache of built tiny pipelines: ``pipelines.pipe(name)``, ``pipelines.output(name, **kw)``."""
    return _CACHE


@pytest.fixture(autouse=True)
def nothing_left_patched():
    """After every test: no denoiser anywhere still carries an installed patch, and every cached pipeline the test
    used is as it was built."""
    yield
    left = [f"{type(d).__name__} ({h!r})" for d, h in list(_ACTIVE.items())]
    changed = _CACHE.check()
    for handle in {h for _, h in list(_ACTIVE.items())}:
        handle.remove()  # one leak must not fail every later test too
    assert not left, f"the test left {len(left)} denoiser(s) patched: {left}"
    assert not changed, f"the test left cached pipeline(s) changed (processors or hooks): {changed}"


def _built(name: str):
    return _CACHE.pipe(name), _CACHE.output(name)


@pytest.fixture(params=CORE_TINY_MODELS)
def tiny(request):
    """(name, pipeline, unpatched output) per core tiny family, from the session cache. A module can narrow the
    families with ``@pytest.mark.parametrize("tiny", [...], indirect=True)``."""
    return (request.param, *_built(request.param))


@pytest.fixture
def sd():
    """(tiny SD pipeline, its unpatched output), from the session cache."""
    return _built("tiny-sd")


@pytest.fixture
def wan():
    """(tiny Wan pipeline, its unpatched output), from the session cache."""
    return _built("tiny-wan")
