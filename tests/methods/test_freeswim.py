"""``freeswim``: dense limit, call counts and cache reuse, the naive two-forward oracle, bad input."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

import diffattn
from diffattn.methods.freeswim import FreeSwimConfig, entropy_scale
from diffattn.tiny import build_tiny_pipeline, tiny_call_kwargs, tiny_output
from tests.helpers import processors, same_objects

from .freeswim_oracle import NaiveFreeSwim

STEPS = 3


def _grid_unet(call):
    return tuple(call["sample"].shape[-2:])


def _grid_pixart(call):
    h, w = call["hidden_states"].shape[-2:]
    return (h // 2, w // 2)


def _grid_wan(call):
    f, h, w = call["hidden_states"].shape[-3:]
    return (f, h // 2, w // 2)


# family -> (token grid reader, UNet levels, odd latent/pixel size for the oracle, odd train grid)
FAMILIES = {
    "tiny-sd": (_grid_unet, True, dict(latent=(15, 17)), (5, 7)),
    "tiny-pixart-alpha": (_grid_pixart, False, dict(latent=(18, 22)), (5, 7)),
    "tiny-wan": (_grid_wan, False, dict(height=80, width=112), (3, 5)),  # 3 x 5 x 7 tokens
}


@pytest.fixture(params=list(FAMILIES))
def fam(request, pipelines):
    return request.param, pipelines.pipe(request.param)


def _call(pipe, name, size=None, **extra):
    """Call kwargs: Wan gets precomputed embeddings (the oracle tells the conditional call by them);
    an odd latent grid goes in as ``latents``."""
    kw = dict(num_inference_steps=STEPS, **extra)
    positive = None
    size = dict(size or {})
    latent = size.pop("latent", None)
    kw.update(size)
    if latent is not None:
        channels = 4
        g = torch.Generator().manual_seed(1)
        kw["latents"] = torch.randn(1, channels, *latent, generator=g)
        kw["height"], kw["width"] = 2 * latent[0] + 2, 2 * latent[1] + 2  # only checked, not used for shapes
        kw["height"] -= kw["height"] % 8
        kw["width"] -= kw["width"] % 8
    if name == "tiny-wan":
        base = tiny_call_kwargs(name)
        pe, ne = pipe.encode_prompt(
            base["prompt"], base["negative_prompt"], True, 1, max_sequence_length=16, device="cpu"
        )
        kw.update(prompt=None, negative_prompt=None, prompt_embeds=pe, negative_prompt_embeds=ne)
        positive = pe
    return kw, positive


def test_dense_limit(fam):
    """cache_steps=1 and a window covering the grid: every step's F equals W, so freeswim is dense."""
    name, pipe = fam
    kw, _ = _call(pipe, name)
    ref = tiny_output(pipe, name, **kw)
    big = 64  # covers every tiny grid
    with diffattn.attention(pipe, "freeswim", train_grid=big, cache_steps=1, entropy_scale=False) as handle:
        out = tiny_output(pipe, name, **kw)
        stats = handle.stats()
    assert (out - ref).abs().max() <= 1e-5
    assert handle.sparse_calls > 0 and handle.fallback_calls == 0
    cross = [s for n, s in stats.items() if n.endswith("attn2")]
    assert cross and all(s.cross_cached == STEPS for s in cross)  # every conditional pass took F's output


def test_call_counts_and_cache_reuse(fam):
    """F runs ceil(steps / cache_steps) times, on conditional passes only; on the steps in between the
    conditional pass reads the cached cross-attention and the module runs only for unconditional rows."""
    name, pipe = fam
    kw, _ = _call(pipe, name)
    den = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    first = next(m for n, m in den.named_modules() if n.endswith("attn1"))  # runs once per forward pass
    seen = []  # batch of each forward pass
    per_step = []  # stats summed after each step

    def pre(module, args, kwargs):
        seen.append(args[0].shape[0])

    def on_step(*args):
        st = handle.stats()
        per_step.append(
            (sum(s.cross for n, s in st.items() if n.endswith("attn2")), sum(s.cross_cached for s in st.values()))
        )
        return args[-1]

    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:
        kw["callback_on_step_end"] = on_step
    else:  # PixArt: the older per-step callback
        kw.update(callback=on_step, callback_steps=1)

    cache_steps = 2
    with diffattn.attention(pipe, "freeswim", train_grid=4, cache_steps=cache_steps) as handle:
        hook = first.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            tiny_output(pipe, name, **kw)
        finally:
            hook.remove()
    n_cross = sum(1 for n in handle.stats() if n.endswith("attn2"))
    f_runs = math.ceil(STEPS / cache_steps)
    passes = 2 * STEPS if name == "tiny-wan" else STEPS  # Wan: separate cond / uncond calls
    assert len(seen) == passes + f_runs
    if name != "tiny-wan":  # batched CFG: W sees [uncond, cond], F the conditional row only
        assert sorted(seen) == [1] * f_runs + [2] * STEPS
    cross, cached = per_step[-1]
    assert cached == n_cross * STEPS  # every conditional pass reused F's cross-attention
    assert cross == n_cross * (STEPS + f_runs)  # the module ran for uncond passes and for F
    # step 1 is between F steps: the cross-attention ran only for the unconditional pass there
    d_cross, d_cached = per_step[1][0] - per_step[0][0], per_step[1][1] - per_step[0][1]
    assert (d_cross, d_cached) == (n_cross, n_cross)


def test_f_runs_on_the_conditional_call_only():
    """Unbatched CFG (Wan): every extra forward receives the positive prompt embeddings."""
    name = "tiny-wan"
    pipe = build_tiny_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    kw, positive = _call(pipe, name)
    got = []
    # the condition embedder gets the raw prompt embeddings once per forward pass (F's included)
    hook = pipe.transformer.condition_embedder.register_forward_pre_hook(
        lambda m, a: got.append(torch.equal(a[1], positive))
    )
    try:
        with diffattn.attention(pipe, "freeswim", train_grid=4, cache_steps=2):
            tiny_output(pipe, name, **kw)
    finally:
        hook.remove()
    # per step: [F (cond)], W cond, W uncond
    assert got == [True, True, False, True, False, True, True, False]


@pytest.mark.slow
@pytest.mark.parametrize("cache_steps", [1, 2], ids=lambda c: f"cache{c}")
def test_equals_naive_oracle_on_odd_grids(fam, cache_steps):
    name, pipe = fam
    grid_fn, multiscale, size, train = FAMILIES[name]
    kw, positive = _call(pipe, name, size)
    oracle = NaiveFreeSwim(train, cache_steps, True, grid_fn, multiscale=multiscale, positive=positive)
    with oracle.installed(pipe):
        expected = tiny_output(pipe, name, **kw)
    assert oracle.f_runs == math.ceil(STEPS / cache_steps)
    with diffattn.attention(pipe, "freeswim", train_grid=train, cache_steps=cache_steps) as handle:
        out = tiny_output(pipe, name, **kw)
    assert handle.fallback_calls == 0
    assert (out - expected).abs().max() <= 1e-4
    dense = tiny_output(pipe, name, **kw)
    assert (out - dense).abs().max() > 1e-3  # the window and the scale did change something


def test_entropy_scale_from_grids():
    # FreeSwim's hard-coded case: N = 2 N_train
    assert entropy_scale((30, 104), (30, 52), 128) == pytest.approx(math.sqrt(math.log(2 * 1560, 1560) / 128))
    assert entropy_scale((5, 30, 52), (30, 52), 64) is None  # not larger than training: the model's scale


@pytest.mark.parametrize(
    "knobs, match",
    [
        (dict(train_grid=8, cache_steps=0), r"cache_steps=0 must be an int >= 1"),
        (dict(train_grid=0), r"train_grid=0 must be an int or \(rows, columns\) of ints >= 1"),
        (dict(train_grid=(4, 4, 4)), r"train_grid=\(4, 4, 4\)"),
        (dict(train_grid=8, full_steps=(3, 1)), r"full_steps=\(3, 1\) must be \(start, end\)"),
    ],
    ids=["cache0", "grid0", "grid3d", "full_steps_reversed"],
)
def test_bad_knobs(knobs, match):
    with pytest.raises(ValueError, match=match):
        FreeSwimConfig(**knobs)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-cogvideox", "tiny-hunyuanvideo"])
def test_joint_attention_families_are_refused(name, pipelines):
    pipe = pipelines.pipe(name)
    before = processors(pipe)
    for preset in (True, False):
        with pytest.raises(ValueError, match=r"'freeswim' does not support .*separate cross-attention"):
            diffattn.apply_attention(pipe, "freeswim", train_grid=8, preset=preset)
        assert same_objects(processors(pipe), before)


def test_bad_cache_steps_leaves_pipeline_unchanged(fam):
    name, pipe = fam
    before = processors(pipe)
    with pytest.raises(ValueError, match="cache_steps=0"):
        diffattn.apply_attention(pipe, "freeswim", train_grid=8, cache_steps=0)
    assert same_objects(processors(pipe), before)


def test_full_steps_limit_f(fam):
    name, pipe = fam
    kw, _ = _call(pipe, name)
    with diffattn.attention(pipe, "freeswim", train_grid=4, cache_steps=1, full_steps=(0, 1)) as handle:
        tiny_output(pipe, name, **kw)
    cross = [s for n, s in handle.stats().items() if n.endswith("attn2")]
    assert all(s.cross_cached == 1 for s in cross)  # only step 0 used F's output


@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart", "wan"])
def test_presets_build_valid_configs(family):
    from diffattn.methods.freeswim import window_size
    from diffattn.patch.presets import PRESETS

    entry = PRESETS[("freeswim", family)]
    config = FreeSwimConfig(**entry.knobs)
    assert config.cache_steps == 2 and config.entropy_scale
    if family == "wan":  # FreeSwim's half-widths 15 and 26 on Wan's 30x52 training tokens
        assert tuple(window_size(t) for t in config.train_grid) == (31, 53)


@pytest.mark.slow
def test_sdxl_batched_cfg_with_added_conditions():
    """SDXL's F pass slices the nested added_cond_kwargs to the conditional rows."""
    name = "tiny-sdxl"
    pipe = build_tiny_pipeline(name)
    pipe.set_progress_bar_config(disable=True)
    ref = tiny_output(pipe, name, num_inference_steps=2)
    with diffattn.attention(pipe, "freeswim", train_grid=64, cache_steps=1, entropy_scale=False) as handle:
        out = tiny_output(pipe, name, num_inference_steps=2)
    assert (out - ref).abs().max() <= 1e-5
    assert all(s.cross_cached == 2 for n, s in handle.stats().items() if n.endswith("attn2"))


def test_bare_denoiser_runs_w_only_and_says_so(caplog, pipelines):
    """Without a pipeline (no captured prompt embeddings, no scheduler) F cannot run: loud, not silent."""
    name = "tiny-pixart-alpha"
    pipe = pipelines.pipe(name)
    with diffattn.attention(pipe.transformer, "freeswim", train_grid=3) as handle:
        tiny_output(pipe, name)
    assert "runs the window branch W only" in caplog.text
    cross = [s for n, s in handle.stats().items() if n.endswith("attn2")]
    assert all(s.cross_cached == 0 and s.cross > 0 for s in cross)


# --------------------------------------------------------------------------- image conditioning (issue 23)


def _tiny_wan_i2v():
    """A WanImageToVideoPipeline from tiny-wan's components plus an image-conditioned transformer (``image_dim``,
    ``added_kv_proj_dim``: its cross-attention has ``add_k_proj``) and a tiny CLIP vision encoder (17 image
    tokens); call kwargs with 512-token prompt embeddings (diffusers' Wan processor splits the encoder tokens at
    ``S - 512``), and the positive embeddings for the oracle."""
    import numpy as np
    import PIL.Image
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    base = build_tiny_pipeline("tiny-wan")
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
        text_dim=32, freq_dim=32, ffn_dim=48, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32, image_dim=16, added_kv_proj_dim=24,
    ).eval()  # fmt: skip
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
        projection_dim=16,
    )  # fmt: skip
    c = base.components
    pipe = WanImageToVideoPipeline(
        tokenizer=c["tokenizer"], text_encoder=c["text_encoder"], vae=c["vae"], scheduler=c["scheduler"],
        transformer=transformer, image_encoder=CLIPVisionModelWithProjection(vision).eval(),
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    kw = tiny_call_kwargs("tiny-wan")
    pe, ne = base.encode_prompt(kw.pop("prompt"), kw.pop("negative_prompt"), True, 1, max_sequence_length=512)
    kw.pop("max_sequence_length", None)
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray((rng.random((kw["height"], kw["width"], 3)) * 255).astype("uint8"))
    kw.update(image=image, prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=STEPS, return_dict=False)
    return pipe, kw, pe


def _frames(pipe, kw) -> torch.Tensor:
    kw = dict(kw, generator=torch.Generator().manual_seed(0))
    return torch.as_tensor(pipe(**kw)[0]).float()


@pytest.mark.parametrize("cache_steps", [1, 2], ids=lambda c: f"cache{c}")
def test_image_conditioned_wan_caches_only_the_text_term(cache_steps):
    """issue 23: with image context (Wan I2V), FreeSwim caches only F's *text* cross-attention term; W adds its own
    image-context term every step. freeswim cached the whole output (4e-3 off on F steps, 0.23 on reuse steps)."""
    pipe, kw, positive = _tiny_wan_i2v()
    attn2 = pipe.transformer.blocks[0].attn2
    assert attn2.add_k_proj is not None
    train = (3, 5)
    oracle = NaiveFreeSwim(train, cache_steps, True, _grid_wan, positive=positive)
    with oracle.installed(pipe):
        expected = _frames(pipe, kw)
    assert oracle.f_runs == math.ceil(STEPS / cache_steps) and oracle.cache_reads > 0
    with diffattn.attention(pipe, "freeswim", train_grid=train, cache_steps=cache_steps) as handle:
        out = _frames(pipe, kw)
    assert handle.fallback_calls == 0
    cross = [s for n, s in handle.stats().items() if n.endswith("attn2")]
    assert cross and all(s.cross_cached == STEPS for s in cross)  # every conditional pass took F's text term
    assert (out - expected).abs().max() <= 1e-4
    assert (out - _frames(pipe, kw)).abs().max() > 1e-3  # and freeswim did change something


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-wan-i2v", "tiny-sd"])
def test_full_uncond_is_freeswims_nocache_mode(name, pipelines):
    """``full_uncond=True`` (FreeSwim's nocache): F on both CFG passes of every step; every W row takes F's
    cross-attention (the text term under image conditioning). Unbatched (Wan) and batched (SD) CFG."""
    if name == "tiny-wan-i2v":
        pipe, kw, positive = _tiny_wan_i2v()
        grid_fn, multiscale, train = _grid_wan, False, (3, 5)

        def run():
            return _frames(pipe, kw)
    else:
        pipe = pipelines.pipe(name)
        grid_fn, multiscale, size, train = FAMILIES[name]
        kw, positive = _call(pipe, name, size)

        def run():
            return tiny_output(pipe, name, **kw)

    oracle = NaiveFreeSwim(train, 1, True, grid_fn, multiscale=multiscale, positive=positive, full_uncond=True)
    with oracle.installed(pipe):
        expected = run()
    passes = STEPS * (2 if name == "tiny-wan-i2v" else 1)
    assert oracle.f_runs == passes
    with diffattn.attention(pipe, "freeswim", train_grid=train, cache_steps=1, full_uncond=True) as handle:
        out = run()
    assert handle.fallback_calls == 0
    cross = [s for n, s in handle.stats().items() if n.endswith("attn2")]
    assert cross and all(s.cross_cached == passes for s in cross)  # every pass, unconditional ones too
    assert (out - expected).abs().max() <= 1e-4
    with diffattn.attention(pipe, "freeswim", train_grid=train, cache_steps=1):
        cache_mode = run()
    assert (out - cache_mode).abs().max() > 1e-4  # the unconditional passes did change


def test_full_uncond_needs_cache_steps_1():
    with pytest.raises(ValueError, match=r"full_uncond=True .*needs cache_steps=1, got cache_steps=2"):
        FreeSwimConfig(train_grid=8, full_uncond=True)
    assert FreeSwimConfig(train_grid=8, cache_steps=1, full_uncond=True).full_uncond


def test_image_context_with_an_unknown_call_pattern_is_not_cached(caplog):
    """A cross-attention with ``add_k_proj`` whose processor does not make [image term, text term] calls over the
    encoder tokens: F's output is not cached (W keeps its own cross-attention), and the log says why."""
    from types import SimpleNamespace

    from diffattn.methods import Branch, ModuleCall
    from diffattn.methods.lifecycle import InnerAttention

    method = diffattn.methods.get_method("freeswim")(FreeSwimConfig(train_grid=4))
    q, k = torch.randn(1, 6, 2, 4), torch.randn(1, 9, 2, 4)
    state: dict = {}

    def module_call(branch: str) -> ModuleCall:
        arguments = {"attn": SimpleNamespace(add_k_proj=object()), "hidden_states": torch.randn(1, 6, 8),
                     "encoder_hidden_states": torch.randn(1, 9, 8)}  # fmt: skip
        return ModuleCall("blocks.0.attn2", 0, "cross", 0, 1.0, Branch(branch, (0,)), state, arguments)

    def run_one_call(call: ModuleCall):  # a processor making one attention call over all 9 encoder tokens
        def go(**overrides):
            route = call.attention_route
            inner = InnerAttention(0, q, k, k, lambda rows: torch.zeros(1, 6, 2, 4))
            return route(inner) if route is not None else torch.ones(1, 6, 2, 4)

        return go

    f = module_call("full")
    with caplog.at_level("WARNING", logger="diffattn"):
        method.process(run_one_call(f), f)
    assert "cross" not in state and "made attention calls over [9] keys" in caplog.text
    w = module_call("cond")
    out = method.process(run_one_call(w), w)
    assert torch.equal(out, torch.ones(1, 6, 2, 4)) and not w.served_from_cache  # W ran its own
