"""diffattn next to the rest of a user's pipeline: custom processors, LoRA (PEFT), tomesd, CPU
offload, torch.compile, several pipelines and threads, exceptions, pickling and save_pretrained."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import threading

import pytest
import torch

import diffattn
from diffattn.tiny import build_tiny_pipeline, tiny_output

from ..helpers import denoiser, processors, same_objects

HUGE = 10**6  # a window covering every tiny grid (clamped per axis: exactly dense)
SD = "tiny-sd"


def _pipe(name: str = SD, seed: int = 0):
    pipe = build_tiny_pipeline(name, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _GainProcessor(torch.nn.Module):
    """A user processor with weights, installed on every attention module (as IP-Adapter does):
    AttnProcessor2_0 followed by a learned per-channel gain."""

    def __init__(self, dim: int, value: float) -> None:
        super().__init__()
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()
        self.gain = torch.nn.Parameter(torch.full((dim,), value))

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb) * self.gain


def test_user_module_processors_with_weights_survive():
    pipe = _pipe()
    unet = pipe.unet
    for i, (_, module) in enumerate((n, m) for n, m in unet.named_modules() if hasattr(m, "set_processor")):
        module.set_processor(_GainProcessor(module.to_out[0].out_features, 1.0 + 0.01 * i))
    before = processors(pipe)
    weights = {k: v.clone() for k, v in unet.state_dict().items()}
    base = tiny_output(pipe, SD)
    with diffattn.attention(pipe, "gna", window=HUGE) as h:
        assert list(unet.state_dict()) == list(weights)  # no leaked or renamed keys while patched
        dense_limit = tiny_output(pipe, SD)
    assert h.sparse_calls > 0 and h.fallback_calls == 0
    torch.testing.assert_close(dense_limit, base, atol=1e-4, rtol=1e-4)  # the user's gains still ran
    with diffattn.attention(pipe, "gna", window=3) as h:
        sparse = tiny_output(pipe, SD)
    assert not torch.allclose(sparse, base, atol=1e-4)
    assert same_objects(before, processors(pipe))
    assert all(torch.equal(v, weights[k]) for k, v in unet.state_dict().items())
    assert torch.equal(tiny_output(pipe, SD), base)


@pytest.fixture()
def lora_pipe():
    from peft import LoraConfig

    pipe = _pipe()
    base = tiny_output(pipe, SD)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        pipe.unet.add_adapter(config, adapter_name="style")
    return pipe, base


def _lora_weights(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in unet.state_dict().items() if "lora" in k}


def test_peft_lora_survives_apply_generate_remove(lora_pipe):
    pipe, base = lora_pipe
    lora_weights = _lora_weights(pipe.unet)
    assert lora_weights, "PEFT installed no LoRA layers"
    with_lora = tiny_output(pipe, SD)
    assert not torch.allclose(with_lora, base, atol=1e-4)
    with diffattn.attention(pipe, "gna", window=HUGE) as h:
        dense_limit = tiny_output(pipe, SD)
        pipe.unet.disable_adapters()  # toggling LoRA while patched works and is seen by our path
        without_lora = tiny_output(pipe, SD)
        pipe.unet.enable_adapters()
    assert h.sparse_calls > 0 and h.fallback_calls == 0
    torch.testing.assert_close(dense_limit, with_lora, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(without_lora, base, atol=1e-4, rtol=1e-4)
    with diffattn.attention(pipe, "gna", window=3):
        sparse = tiny_output(pipe, SD)
    assert not torch.allclose(sparse, with_lora, atol=1e-4)
    after = _lora_weights(pipe.unet)
    assert after.keys() == lora_weights.keys() and all(torch.equal(after[k], lora_weights[k]) for k in after)
    assert torch.equal(tiny_output(pipe, SD), with_lora)


def test_lora_loaded_while_patched_runs_and_unloads(lora_pipe):
    """A LoRA added after patching wraps the projections, not the processors: both stay in effect."""
    from peft import LoraConfig

    pipe, base = lora_pipe
    with_one = tiny_output(pipe, SD)
    with diffattn.attention(pipe, "gna", window=HUGE) as h:
        config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False)
        pipe.unet.add_adapter(config, adapter_name="second")
        pipe.unet.set_adapters(["style", "second"])
        both = tiny_output(pipe, SD)
        pipe.unet.delete_adapters("second")
    assert h.sparse_calls > 0
    assert not torch.allclose(both, with_one, atol=1e-4)
    assert torch.equal(tiny_output(pipe, SD), with_one)


@pytest.mark.parametrize("order", ["tomesd-first", "diffattn-first"])
@pytest.mark.parametrize("remove_order", ["remove-diffattn-first", "remove-tomesd-first"])
def test_stacking_with_tomesd(order, remove_order, caplog):
    tomesd = pytest.importorskip("tomesd", reason="tomesd is an optional peer (pip install tomesd)")
    pipe = _pipe()
    base = tiny_output(pipe, SD)
    with caplog.at_level(logging.WARNING, logger="diffattn"):
        if order == "tomesd-first":
            tomesd.apply_patch(pipe, ratio=0.5)
            handle = diffattn.apply_attention(pipe, "gna", window=3)
        else:
            handle = diffattn.apply_attention(pipe, "gna", window=3)
            tomesd.apply_patch(pipe, ratio=0.5)
        out = tiny_output(pipe, SD)
        tiny_output(pipe, SD)  # a second run must not log the fallback again
    stats = handle.stats()
    # tomesd merges tokens only at full resolution (max_downsample=1): the outermost blocks
    top = ("unet.down_blocks.0.", f"unet.up_blocks.{len(pipe.unet.up_blocks) - 1}.")
    merged = {name for name in stats if name.startswith(top)}
    assert merged and all(stats[n].fallback > 0 and stats[n].sparse == 0 for n in merged)
    assert all(s.sparse > 0 and s.fallback == 0 for name, s in stats.items() if name not in merged)
    fallback_logs = [r.getMessage() for r in caplog.records if "falls back to dense" in r.getMessage()]
    assert len(fallback_logs) == len(merged)  # once per module, not once per call
    assert all("sequence length" in m and "the grid" in m for m in fallback_logs)
    assert torch.isfinite(out).all()
    if remove_order == "remove-diffattn-first":
        handle.remove()
        tomesd.remove_patch(pipe)
    else:
        tomesd.remove_patch(pipe)
        handle.remove()
    assert torch.equal(tiny_output(pipe, SD), base)


@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_accelerate_cpu_offload(offload):
    pipe = _pipe()
    base = tiny_output(pipe, SD)
    with diffattn.attention(pipe, "gna", window=3):
        patched = tiny_output(pipe, SD)
    handle = diffattn.apply_attention(pipe, "gna", window=3)
    if offload == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    else:
        # the per-module hooks enable_sequential_cpu_offload installs, on the denoiser: with torch
        # 2.13 + accelerate 1.15 the pipeline-wide call fails in the CLIP text encoder's buffers
        # (accelerate re-creates a plain-Tensor buffer with requires_grad=), with or without diffattn
        from accelerate import cpu_offload

        cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
    offloaded = tiny_output(pipe, SD)
    assert handle.sparse_calls > 0 and handle.fallback_calls == 0
    torch.testing.assert_close(offloaded, patched, atol=1e-5, rtol=1e-5)
    handle.remove()
    torch.testing.assert_close(tiny_output(pipe, SD), base, atol=1e-5, rtol=1e-5)
    pipe.remove_all_hooks()


@pytest.mark.slow
def test_torch_compile_matches_eager():
    """The patched denoiser under torch.compile (CPU inductor): graph breaks are allowed, results
    must match eager, the sparse path must really run inside the compiled model, and patching,
    removing and re-patching a model that is already compiled work too."""
    name = "tiny-pixart-alpha"
    pipe = _pipe(name)
    base = tiny_output(pipe, name)
    handle = diffattn.apply_attention(pipe, "gna", window=3)
    eager = tiny_output(pipe, name)
    calls_eager = handle.sparse_calls
    eager_transformer = pipe.transformer
    pipe.transformer = torch.compile(eager_transformer)
    try:
        compiled = tiny_output(pipe, name)
        assert handle.sparse_calls == 2 * calls_eager
        torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
        handle.remove()
        torch.testing.assert_close(tiny_output(pipe, name), base, atol=1e-4, rtol=1e-4)
        again = diffattn.apply_attention(pipe, "gna", window=3)  # patch the compiled model itself
        torch.testing.assert_close(tiny_output(pipe, name), eager, atol=1e-4, rtol=1e-4)
        assert again.sparse_calls == calls_eager
        again.remove()
    finally:
        pipe.transformer = eager_transformer
        torch._dynamo.reset()
    assert torch.equal(tiny_output(pipe, name), base)


def test_two_pipelines_patched_differently_and_in_threads():
    first, second = _pipe(SD, seed=0), _pipe("tiny-pixart-alpha", seed=1)
    h1 = diffattn.apply_attention(first, "gna", window=3)
    h2 = diffattn.apply_attention(second, "gna", window=5, stride=5)
    solo = {SD: tiny_output(first, SD), "tiny-pixart-alpha": tiny_output(second, "tiny-pixart-alpha")}
    assert h1.config.window == 3 and h2.config.window == 5
    results: dict[str, list[torch.Tensor]] = {SD: [], "tiny-pixart-alpha": []}
    errors: list[BaseException] = []

    def work(pipe, name):
        try:
            for _ in range(2):
                results[name].append(tiny_output(pipe, name))
        except BaseException as e:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(e)

    threads = [threading.Thread(target=work, args=a) for a in ((first, SD), (second, "tiny-pixart-alpha"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for name, outs in results.items():
        assert len(outs) == 2 and all(torch.equal(o, solo[name]) for o in outs), name
    assert h1.fallback_calls == 0 and h2.fallback_calls == 0
    h1.remove()
    assert not h2.removed and torch.equal(tiny_output(second, "tiny-pixart-alpha"), solo["tiny-pixart-alpha"])
    h2.remove()


def test_remove_after_exception_inside_generation():
    pipe = _pipe()
    base = tiny_output(pipe, SD)
    before = processors(pipe)

    def explode(pipe, step, timestep, kwargs):
        raise RuntimeError(f"user callback failed at step {step}")

    handle = diffattn.apply_attention(pipe, "gna", window=3)
    with pytest.raises(RuntimeError, match="user callback failed"):
        tiny_output(pipe, SD, callback_on_step_end=explode)
    handle.remove()
    assert same_objects(before, processors(pipe))
    assert not pipe.unet._forward_pre_hooks
    assert torch.equal(tiny_output(pipe, SD), base)


@pytest.mark.parametrize("name", [SD, "tiny-flux", "tiny-wan"])
def test_pickle_and_deepcopy_give_the_unpatched_pipeline(name):
    pipe = _pipe(name)
    base = tiny_output(pipe, name)
    handle = diffattn.apply_attention(pipe, "gna", window=3)
    patched = tiny_output(pipe, name)
    blob = pickle.dumps(pipe)
    assert b"diffattn" not in blob  # loading needs no diffattn and carries no patch
    for clone in (pickle.loads(blob), copy.deepcopy(pipe)):
        assert torch.equal(tiny_output(clone, name), base)
        den = denoiser(clone)
        assert not den._forward_pre_hooks and "__reduce_ex__" not in den.__dict__
    assert torch.equal(tiny_output(pipe, name), patched)  # the original stays patched
    handle.remove()
    assert torch.equal(tiny_output(pipe, name), base)


def test_save_pretrained_while_patched_leaks_nothing(tmp_path):
    from diffusers import DiffusionPipeline

    pipe = _pipe()
    base = tiny_output(pipe, SD)
    with diffattn.attention(pipe, "gna", window=3):
        pipe.save_pretrained(tmp_path)
    texts = [p.read_text() for p in tmp_path.rglob("*.json")]
    assert texts and not any("diffattn" in t for t in texts)
    json.loads((tmp_path / "unet" / "config.json").read_text())  # a valid config
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(tiny_output(loaded, SD), base)
