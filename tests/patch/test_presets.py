"""Presets: the table covers every (gna|msw, family), preset knobs/layers/steps fill only what the user
left unset, Unsupported entries raise, methods without presets need explicit knobs, fractional steps."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import diffattn
from diffattn.cli import main
from diffattn.kernels import block_sparse_attention
from diffattn.methods import AttentionMethod, get_method, register_method
from diffattn.methods import registry as method_registry
from diffattn.methods.gna import GNAConfig, gna_plan
from diffattn.models import family_key, find_adapter
from diffattn.models.denoisers import first_denoiser
from diffattn.patch import StepFraction, presets
from diffattn.patch.presets import FAMILIES, PRESETS, Preset, Unsupported
from diffattn.tiny import CORE_TINY_MODELS, tiny_output

TINY_FAMILY = {
    "tiny-sd": "sd",
    "tiny-sdxl": "sdxl",
    "tiny-pixart-alpha": "pixart",
    "tiny-pixart-sigma": "pixart",
    "tiny-sd3": "sd3",
    "tiny-flux": "flux",
    "tiny-cogvideox": "cogvideox",
    "tiny-wan": "wan",
    "tiny-hunyuanvideo": "hunyuanvideo",
    "tiny-ltx": "ltx",
}
FAMILY_NDIM = {f: 3 if f in ("wan", "cogvideox", "hunyuanvideo", "ltx") else 2 for f in FAMILIES}


# --------------------------------------------------------------------------- the table


@pytest.mark.parametrize("name", CORE_TINY_MODELS)
def test_family_key_of_every_tiny_model(name, pipelines):
    pipe = pipelines.pipe(name)
    assert family_key(first_denoiser(pipe)) == TINY_FAMILY[name]


def test_families_are_the_tiny_families():
    assert set(FAMILIES) == set(TINY_FAMILY.values())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["agent", "gna", "msw", "proxy"])
def test_table_covers_method_and_family_with_valid_presets(method, family):
    entry = PRESETS[(method, family)]
    assert isinstance(entry, Preset | Unsupported)
    if isinstance(entry, Unsupported):
        assert entry.reason
        return
    cls = get_method(method)
    impl = cls(cls.make_config(**entry.knobs))  # the knobs build a valid config
    impl.check_ndim(FAMILY_NDIM[family])  # of the family's grid dimensionality
    if entry.layers is not None:
        re.compile(entry.layers)
    assert entry.source


def test_presets_are_immutable():
    entry = PRESETS[("gna", "flux")]
    with pytest.raises(TypeError):
        entry.knobs["window"] = 3  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.layers = "x"  # type: ignore[misc]


def test_preset_validates_itself():
    with pytest.raises(TypeError, match="knobs=3 must be a mapping"):
        Preset(3, None, None, "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source must say"):
        Preset({}, None, None, "")


def test_cli_presets_lists_every_entry(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["method", "family", "knobs", "layers", "steps", "source"]
    assert len(lines) == 1 + len(PRESETS)
    rows = [line.split() for line in lines[1:]]
    assert {(r[0], r[1]) for r in rows} == set(PRESETS)
    sd_row = next(line for line in lines if line.startswith("msw ") and " sd " in line)
    assert r"down_blocks\.0\.|up_blocks\.3\." in sd_row and "HiDiffusion" in sd_row
    flux_row = next(line for line in lines if line.startswith("gna ") and " flux " in line)
    assert "window=(80, 80), stride=(16, 16)" in flux_row


# --------------------------------------------------------------------------- apply_attention


def test_no_knobs_takes_the_preset(sd):
    pipe, base = sd
    with diffattn.attention(pipe, "gna") as h:
        tiny_output(pipe, "tiny-sd")
    assert h.preset is PRESETS[("gna", "sd")]
    assert h.config == GNAConfig(**PRESETS[("gna", "sd")].knobs)
    assert h.sparse_calls > 0 and h.fallback_calls == 0


def test_user_knobs_replace_preset_knobs_as_a_whole(sd):
    pipe, _ = sd
    with diffattn.attention(pipe, "gna", window=3) as h:
        pass
    assert h.config == GNAConfig(window=3)  # stride 1, not the preset's 16
    with diffattn.attention(pipe, "gna", config=GNAConfig(window=5, stride=5)) as h:
        pass
    assert h.config == GNAConfig(window=5, stride=5)


def test_user_layers_override_preset_layers(sd):
    pipe, _ = sd
    with diffattn.attention(pipe, "msw", layers=r"up_blocks\.1\.") as h:
        pass
    assert h.modules and all(".up_blocks.1." in m for m in h.modules)
    with diffattn.attention(pipe, "msw", preset=False) as h:
        pass
    assert len(h.modules) == 7 and h.preset is None  # every self-attention of tiny-sd


def test_preset_steps_apply_unless_given(sd, monkeypatch):
    pipe, base = sd
    monkeypatch.setitem(PRESETS, ("msw", "sd"), Preset({}, None, (0.0, 0.5), "test"))
    with diffattn.attention(pipe, "msw") as h:
        tiny_output(pipe, "tiny-sd")
    assert all(s.sparse > 0 and s.sparse == s.dense for s in h.stats().values())  # step 0 of 2 only
    with diffattn.attention(pipe, "msw", steps=(0.0, 1.0)) as h:
        tiny_output(pipe, "tiny-sd")
    assert all(s.sparse > 0 and s.dense == 0 for s in h.stats().values())


def test_preset_steps_on_a_bare_denoiser_warn_and_run_every_step(sd, monkeypatch, caplog):
    pipe, _ = sd
    monkeypatch.setitem(PRESETS, ("msw", "sd"), Preset({}, None, (0.0, 0.5), "test"))
    with caplog.at_level("WARNING", logger="diffattn"):
        with diffattn.attention(pipe.unet, "msw") as h:
            tiny_output(pipe, "tiny-sd")
    assert "needs the pipeline's scheduler" in caplog.text
    assert all(s.sparse == 2 and s.dense == 0 for s in h.stats().values())


def test_preset_layers_matching_nothing_say_so(sd, monkeypatch):
    pipe, _ = sd
    monkeypatch.setitem(PRESETS, ("msw", "sd"), Preset({}, r"^nowhere$", None, "test"))
    with pytest.raises(ValueError, match=r"layers='\^nowhere\$' \(the preset's layers; pass layers= or preset=False\)"):
        diffattn.apply_attention(pipe, "msw")


def test_unsupported_entry_raises_its_reason_and_changes_nothing(sd, monkeypatch):
    pipe, base = sd
    before = {n: m.processor for n, m in pipe.unet.named_modules() if hasattr(m, "set_processor")}
    monkeypatch.setitem(PRESETS, ("msw", "sd"), Unsupported("needs a 3-D grid"))
    with pytest.raises(ValueError, match=r"method 'msw' is not supported on sd models: needs a 3-D grid"):
        diffattn.apply_attention(pipe, "msw")
    after = {n: m.processor for n, m in pipe.unet.named_modules() if hasattr(m, "set_processor")}
    assert all(before[k] is after[k] for k in before)
    assert torch.equal(tiny_output(pipe, "tiny-sd"), base)


@dataclasses.dataclass(frozen=True)
class _BlockConfig:
    window: int


class _LateMethod(AttentionMethod):
    """Stands for a method registered after this table was written (proxy, agent, ...)."""

    name = "late-test-method"
    Config = _BlockConfig

    def attend(self, q, k, v, call):
        w = self.config.window
        window = tuple(min(w, g) for g in call.grid)
        plan = gna_plan(tuple(call.grid), *GNAConfig(window=window, stride=window).resolve(tuple(call.grid)))
        return block_sparse_attention(
            q, k, v, plan, extra_k=call.extra_k, extra_v=call.extra_v, scale=call.scale, backend=call.backend
        )


@pytest.fixture
def late_method():
    register_method(_LateMethod)
    yield _LateMethod.name
    del method_registry._METHODS[_LateMethod.name]


def test_method_without_presets_works_with_explicit_knobs(sd, late_method):
    pipe, base = sd
    assert not any(m == late_method for m, _ in PRESETS)
    with pytest.raises(TypeError, match=r"needs knob\(s\) \['window'\]"):
        diffattn.apply_attention(pipe, late_method)
    with diffattn.attention(pipe, late_method, window=4) as h:
        out = tiny_output(pipe, "tiny-sd")
    assert h.preset is None and h.sparse_calls > 0 and h.fallback_calls == 0
    assert not torch.allclose(out, base, atol=1e-4)


# --------------------------------------------------------------------------- fractional steps


@pytest.mark.parametrize(
    "steps,n,expected",
    [
        ((0.0, 0.4), 50, range(0, 20)),  # AgentSD: steps 0-19 of 50
        ((0.0, 1.0), 7, range(0, 7)),
        ((0.5, 1.0), 3, range(2, 3)),
        ((0.2, 0.6), 10, range(2, 6)),
        ((0.0, 0.4), 2, range(0, 1)),
        ((0.51, 0.55), 10, range(6, 6)),
    ],
    ids=["agentsd-50", "all-7", "second-half-3", "middle-10", "first-40pct-of-2", "empty-between-steps"],
)
def test_step_fraction_resolves_against_schedule_length(steps, n, expected):
    resolved = StepFraction(*steps).resolve(n)
    assert resolved == expected
    assert list(resolved) == [i for i in range(n) if steps[0] <= i / n < steps[1]]  # the documented rule


@pytest.mark.parametrize(
    "steps,sparse_per_dense",
    [((0.0, 0.5), "equal"), ((0.5, 1.0), "equal"), ((0, 0.5), "equal"), ((0.0, 1.0), "all")],
    ids=["first-half", "second-half", "int-and-float", "whole"],
)
def test_fractional_steps_in_a_pipeline(sd, steps, sparse_per_dense):
    pipe, _ = sd
    with diffattn.attention(pipe, "gna", window=3, steps=steps) as h:
        tiny_output(pipe, "tiny-sd")
    stats = list(h.stats().values())
    if sparse_per_dense == "equal":  # one of the two steps sparse (CFG batch: one call per step)
        assert all(s.sparse == 1 and s.dense == 1 for s in stats), stats
    else:
        assert all(s.sparse == 2 and s.dense == 0 for s in stats), stats


def test_integer_steps_keep_their_meaning(sd):
    pipe, _ = sd
    with diffattn.attention(pipe, "gna", window=3, steps=(1, 2)) as h:
        tiny_output(pipe, "tiny-sd")
    assert all(s.sparse == 1 and s.dense == 1 for s in h.stats().values())


def test_adapters_expose_family_keys(pipelines):
    pipe = pipelines.pipe("tiny-sdxl")
    assert find_adapter(pipe.unet).family_key(pipe.unet) == "sdxl"
    assert presets.preset_for("gna", "dit") is None  # a family without presets: no defaults, no error
