"""The method lifecycle seams, shown by a toy stateful method defined only here (a miniature FreeSwim):
it runs the denoiser twice on conditional steps, caches each cross-attention output of its extra pass
per layer and reuses it on later steps, resets per generation, installs and removes bit-exactly, rolls
back on a failure anywhere in the install, and keeps its state per pipeline and per thread."""

from __future__ import annotations

import collections
import copy
import dataclasses
import pickle
import threading

import pytest
import torch
import torch.nn.functional as F

import diffattn
from diffattn.methods import AttentionMethod, register_method
from diffattn.methods import registry as method_registry
from diffattn.patch import records
from diffattn.tiny import build_tiny_pipeline, tiny_call_kwargs, tiny_output

from ..helpers import denoiser

TOY = "toy-two-pass"
COND = ("cond", "cfg")


@dataclasses.dataclass(frozen=True)
class TwoPassConfig:
    """every: the extra "full" pass runs on conditional calls of steps ``step % every == 0``."""

    every: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every={self.every!r} must be an int >= 1")


class TwoPass(AttentionMethod):
    """Dense self-attention; on conditional calls of every ``every``-th step the denoiser runs once more
    as branch "full", whose cross-attention outputs each layer caches; conditional passes reuse them."""

    name = TOY
    Config = TwoPassConfig
    targets = frozenset({"self", "cross"})

    def __init__(self, config: TwoPassConfig) -> None:
        super().__init__(config)
        self.events: list[tuple] = []  # list.append is atomic under the GIL: safe from several threads

    def new_forward(self, call, *args, **kwargs):
        steps = call.state.setdefault("steps", [])
        steps.append(call.step)
        self.events.append(("forward", threading.get_ident(), call.step, call.branch.name, tuple(steps)))
        if call.branch.name in COND and call.step is not None and call.step % self.config.every == 0:
            call.run_as("full", *args, **kwargs)
        return call.run(*args, **kwargs)

    def process(self, run, call):
        self.events.append(("module", threading.get_ident(), call.kind, call.layer, call.step, call.branch.name))
        if call.kind == "self":
            return run()
        if call.branch.name == "full":
            out = run()
            call.state.update(cache=out, step=call.step, owner=threading.get_ident())
            return out
        if call.branch.name in COND and "cache" in call.state:
            owner, asker = call.state["owner"], threading.get_ident()
            self.events.append(("hit", owner, call.layer, call.step, call.state["step"], asker))
            return call.state["cache"]
        return run()

    def attend(self, q, k, v, call):  # [B, S, H, D] -> [B, S, H, D], exact dense over the image tokens
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, scale=call.scale).transpose(1, 2)


@pytest.fixture(autouse=True)
def toy():
    register_method(TwoPass)
    yield TOY
    del method_registry._METHODS[TOY]


def _pipe(name: str = "tiny-sd", seed: int = 0):
    pipe = build_tiny_pipeline(name, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=["tiny-sd", "tiny-wan"], ids=["batched-cfg", "separate-cfg-calls"])
def cfg_pipe(request, pipelines):
    """(name, pipeline, unpatched 3-step output): CFG batched into one call (SD) or separate calls (Wan)."""
    name = request.param
    return name, pipelines.pipe(name), pipelines.output(name, num_inference_steps=3)


def _snapshot(pipe) -> dict:
    den = denoiser(pipe)
    return {
        "processors": [(n, id(m.processor)) for n, m in den.named_modules() if hasattr(m, "set_processor")],
        "pre_hooks": list(den._forward_pre_hooks),
        "kwarg_hooks": list(den._forward_pre_hooks_with_kwargs),
        "denoiser_attrs": {k: id(v) for k, v in den.__dict__.items() if not k.startswith("_")},
        "denoiser_keys": sorted(den.__dict__),
        "pipe_keys": sorted(pipe.__dict__),
    }


def _forwards(method) -> collections.Counter:
    return collections.Counter((e[2], e[3]) for e in method.events if e[0] == "forward")


def test_runs_twice_per_step_and_reuses_the_cache_across_steps(cfg_pipe):
    name, pipe, base = cfg_pipe
    with diffattn.attention(pipe, TOY, preset=False) as h:
        out = tiny_output(pipe, name, num_inference_steps=3)
    events = h.method.events
    cond = "cfg" if name == "tiny-sd" else "cond"
    # the extra pass runs on the conditional call of steps 0 and 2 (every=2), before the regular one
    full = {(e[4], e[5]) for e in events if e[0] == "module" and e[5] == "full"}
    assert {s for s, _ in full} == {0, 2}
    assert {(e[2], e[3]) for e in events if e[0] == "forward"} >= {(0, cond), (1, cond), (2, cond)}
    # step 1 answers every cross layer from the cache its step-0 "full" pass filled
    cross = [n for n, s in h.stats().items() if s.cross + s.cross_cached]
    assert cross and all(".attn2" in n for n in cross)
    hits = [(e[2], e[3], e[4]) for e in events if e[0] == "hit"]
    assert {(layer, 1, 0) for layer in cross} <= set(hits)
    assert {(layer, 2, 2) for layer in cross} <= set(hits)  # refreshed at step 2
    assert all(h.stats()[n].cross_cached == 3 for n in cross)  # cond passes of steps 0, 1, 2
    self_modules = [n for n, s in h.stats().items() if s.sparse]
    n_forward_runs = 5 if name == "tiny-sd" else 8  # 3 steps + 2 extra; Wan: 3 cond + 3 uncond + 2 extra
    assert all(h.stats()[n].sparse == n_forward_runs for n in self_modules)
    assert not torch.allclose(out, base, atol=1e-4)  # step 1 really used a stale cross-attention output
    assert torch.equal(tiny_output(pipe, name, num_inference_steps=3), base)


def test_every_step_full_pass_matches_dense(cfg_pipe):
    """With the extra pass on every step, each reused cross output is the one the regular pass would
    have computed from identical inputs: the result is the model's own, up to rounding."""
    name, pipe, base = cfg_pipe
    with diffattn.attention(pipe, TOY, preset=False, every=1) as h:
        out = tiny_output(pipe, name, num_inference_steps=3)
    assert sum(s.cross_cached for s in h.stats().values()) > 0
    torch.testing.assert_close(out, base, atol=1e-4, rtol=1e-4)


def test_state_resets_on_each_generation(cfg_pipe):
    name, pipe, _ = cfg_pipe
    with diffattn.attention(pipe, TOY, preset=False) as h:
        first = tiny_output(pipe, name, num_inference_steps=3, seed=1)
        second = tiny_output(pipe, name, num_inference_steps=3, seed=2)
    histories = [e[4] for e in h.method.events if e[0] == "forward" and e[3] in COND]
    assert histories[0] == (0,) and histories.count((0,)) == 2  # the step list restarted once
    assert max(len(x) for x in histories) <= (3 if name == "tiny-sd" else 6)
    with diffattn.attention(pipe, TOY, preset=False):  # a fresh handle gives the same second generation
        assert torch.equal(tiny_output(pipe, name, num_inference_steps=3, seed=2), second)
    assert not torch.equal(first, second)


def test_step_going_back_resets_without_a_pipeline_call():
    pipe = _pipe()
    unet, scheduler = pipe.unet, pipe.scheduler
    scheduler.set_timesteps(3)
    sample = torch.randn(1, unet.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0))
    with diffattn.attention(pipe, TOY, preset=False) as h:
        text, _ = pipe.encode_prompt("a red fox", "cpu", 1, False)
        for i in (0, 1, 0, 0):
            unet(sample, scheduler.timesteps[i], encoder_hidden_states=text)
        h.reset_state()
        unet(sample, scheduler.timesteps[1], encoder_hidden_states=text)
    histories = [e[4] for e in h.method.events if e[0] == "forward"]
    assert histories == [(0,), (0, 1), (0,), (0, 0), (1,)]


def test_apply_remove_pickle_are_bit_exact(cfg_pipe):
    name, pipe, base = cfg_pipe
    before = _snapshot(pipe)
    handle = diffattn.apply_attention(pipe, TOY, preset=False)
    assert "forward" in denoiser(pipe).__dict__ and "encode_prompt" in pipe.__dict__
    patched = tiny_output(pipe, name, num_inference_steps=3)
    blob = pickle.dumps(pipe)
    assert b"diffattn" not in blob
    for clone in (pickle.loads(blob), copy.deepcopy(pipe)):
        assert "forward" not in denoiser(clone).__dict__ and "encode_prompt" not in clone.__dict__
        assert torch.equal(tiny_output(clone, name, num_inference_steps=3), base)
    assert torch.equal(tiny_output(pipe, name, num_inference_steps=3), patched)
    handle.remove()
    assert _snapshot(pipe) == before
    assert torch.equal(tiny_output(pipe, name, num_inference_steps=3), base)


@pytest.mark.parametrize("position", ["first", "pre-hook", "forward", "middle", "last"])
def test_failure_anywhere_in_the_install_rolls_back(cfg_pipe, position, monkeypatch):
    name, pipe, base = cfg_pipe
    with diffattn.attention(pipe, TOY, preset=False) as h:
        kinds = [type(r).__name__ for r in h._records]
    at = {
        "first": 0,
        "pre-hook": kinds.index("ForwardPreHook"),
        "forward": kinds.index("SetAttr", kinds.index("ForwardPreHook")),
        "middle": len(kinds) // 2,
        "last": len(kinds) - 1,
    }[position]
    before = _snapshot(pipe)
    count = [0]
    for cls in (records.SetAttr, records.ForwardPreHook, records.ProcessorSwap):
        original = cls.apply

        def failing(self, _original=original):
            count[0] += 1
            if count[0] == at + 1:
                raise RuntimeError("injected failure")
            _original(self)

        monkeypatch.setattr(cls, "apply", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        diffattn.apply_attention(pipe, TOY, preset=False)
    monkeypatch.undo()
    assert count[0] == at + 1
    assert _snapshot(pipe) == before
    assert torch.equal(tiny_output(pipe, name, num_inference_steps=3), base)


def test_state_is_per_pipeline():
    """A generation of pipeline B run inside pipeline A's generation (same thread, same layer names)
    neither sees nor disturbs A's cache."""
    a, b = _pipe(seed=0), _pipe(seed=1)
    solo_a, solo_b = (tiny_output(p, "tiny-sd", num_inference_steps=3) for p in (a, b))
    with diffattn.attention(a, TOY, preset=False), diffattn.attention(b, TOY, preset=False):
        alone_a = tiny_output(a, "tiny-sd", num_inference_steps=3)
        nested: list[torch.Tensor] = []

        def run_b(pipe, step, timestep, kwargs):
            if step == 0:
                nested.append(tiny_output(b, "tiny-sd", num_inference_steps=3))
            return kwargs

        with_b = tiny_output(a, "tiny-sd", num_inference_steps=3, callback_on_step_end=run_b)
        alone_b = tiny_output(b, "tiny-sd", num_inference_steps=3)
    assert torch.equal(with_b, alone_a) and torch.equal(nested[0], alone_b)
    assert not torch.equal(alone_a, solo_a) and not torch.equal(alone_b, solo_b)  # the toy changed both


def test_state_is_per_thread_on_one_pipeline():
    """Two threads generate on one pipeline (DDIM steps are stateless), meeting after step 0 so both
    caches are filled before either reuses its own: each matches its single-threaded result.

    The prompt is encoded once, outside the threads: the pipeline's tokenizer is not thread-safe (transformers'
    fast tokenizer sets its padding and truncation on the shared backend per call), so two threads running
    ``encode_prompt`` at once got other embeddings than one thread alone in 30 of 200 rounds, without diffattn;
    that made this test flaky (one output off by 0.17) under load."""
    pipe = _pipe()
    pos, neg = pipe.encode_prompt(tiny_call_kwargs("tiny-sd")["prompt"], "cpu", 1, True)
    embeds = dict(prompt=None, prompt_embeds=pos, negative_prompt_embeds=neg)
    with diffattn.attention(pipe, TOY, preset=False) as h:
        solo = {seed: tiny_output(pipe, "tiny-sd", num_inference_steps=3, seed=seed, **embeds) for seed in (1, 2)}
        barrier = threading.Barrier(2, timeout=300)
        results: dict[int, torch.Tensor] = {}
        errors: list[BaseException] = []

        def meet(pipe, step, timestep, kwargs):
            if step == 0:
                barrier.wait()
            return kwargs

        def work(seed: int) -> None:
            try:
                kw = dict(num_inference_steps=3, seed=seed, callback_on_step_end=meet, **embeds)
                results[seed] = tiny_output(pipe, "tiny-sd", **kw)
            except BaseException as e:  # surfaced below
                errors.append(e)
                barrier.abort()

        h.method.events.clear()
        threads = [threading.Thread(target=work, args=(seed,)) for seed in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert all(torch.equal(results[s], solo[s]) for s in solo)
    hits = [e for e in h.method.events if e[0] == "hit"]
    assert hits and all(owner == asker for _, owner, *_, asker in hits)  # each thread only saw its own cache
    assert len({e[1] for e in hits}) == 2


class _UNetOnly(TwoPass):
    name = "toy-unet-only"

    def supports(self, adapter):
        return None if "UNet2DConditionModel" in adapter.class_names else "it needs a UNet (UNet2DConditionModel)"


@pytest.mark.parametrize(
    "method,family,needs",
    [
        (TOY, "tiny-flux", r"does not support flux models \(FluxTransformer2DModel\): it needs separate cross-att"),
        ("toy-unet-only", "tiny-pixart-alpha", r"does not support pixart models .*: it needs a UNet"),
    ],
)
def test_unsupported_family_is_refused_even_without_presets(method, family, needs):
    register_method(_UNetOnly)
    try:
        pipe = _pipe(family)
        before = _snapshot(pipe)
        with pytest.raises(ValueError, match=needs):
            diffattn.apply_attention(pipe, method, preset=False)
        assert _snapshot(pipe) == before
    finally:
        del method_registry._METHODS["toy-unet-only"]


def test_new_generation_on_the_embedded_model():
    """The embedded model's pipeline (no ``check_inputs``; batched CFG, prompts encoded by two
    ``encode_prompt`` calls): a second generation with other captions on one handle equals a fresh handle's.
    Before, the handle kept the first generation's embeddings, so the second could not tell its conditional
    rows: no extra pass ran, and the cache of the first generation's last step was never refreshed."""
    pipe = diffattn.tiny_model()
    captions = ["a red circle on a blue background", "white vertical stripes on a black background"]

    def run(caption: str, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return pipe([caption], height=64, width=64, num_inference_steps=3, generator=generator, output_type="pt").images

    with diffattn.attention(pipe, TOY, preset=False) as h:
        first = run(captions[0], 1)
        second = run(captions[1], 2)
    with diffattn.attention(pipe, TOY, preset=False):
        fresh = run(captions[1], 2)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    full = [e for e in h.method.events if e[0] == "module" and e[5] == "full"]
    assert {e[4] for e in full} == {0, 2} and len(full) == 2 * 2 * 12  # 2 generations, steps 0 and 2, 12 modules
