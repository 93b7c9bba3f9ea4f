"""`agent`: AgentSD agent attention against its closed form and an independent implementation."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import diffattn
from diffattn.kernels import reference_attention
from diffattn.methods import AttendCall, get_method
from diffattn.testing.tiny import tiny_output

from .helpers import make_method, processors, random_qkv

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _text(t: int, dtype=torch.float32, batch: int = 2):
    k, v, _ = random_qkv(t, dtype, seed=99, batch=batch)
    mask = torch.ones(batch, t, dtype=torch.bool)
    mask[0, t // 2 :] = False
    return k, v, mask


def _softmax_attention(q, k, v, scale, key_mask=None):
    """Plain fp32 ``softmax(q k^T scale) v`` on [B, S, H, D] with explicit matrices."""
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * scale
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.double())


def _closed_form(q, k, v, agents, scale, power, shortcut, text=None):
    """V_A = softmax(A [K; K_text]^T s) [V; V_text]; out = softmax(Q A^T s^p) V_A + c V."""
    key_mask = None
    if text is not None:
        tk, tv, tm = text
        key_mask = torch.cat([torch.ones(k.shape[0], k.shape[1], dtype=torch.bool), tm], 1)
        k, v_all = torch.cat([k, tk], 1), torch.cat([v, tv], 1)
    else:
        v_all = v
    agent_v = _softmax_attention(agents, k, v_all, scale, key_mask)
    return _softmax_attention(q, agents, agent_v, scale**power) + shortcut * v.double()


def _pool_matrix(length: int, n: int) -> torch.Tensor:
    """[n, length] averaging matrix of adaptive pooling bins [floor(i L / n), ceil((i + 1) L / n))."""
    p = torch.zeros(n, length, dtype=torch.float64)
    for i in range(n):
        lo, hi = (i * length) // n, -((-(i + 1) * length) // n)
        p[i, lo:hi] = 1.0 / (hi - lo)
    return p


def _pooled_agents(q, grid, agent_grid):
    """Agents by explicit per-axis averaging matrices (independent of torch's adaptive pooling)."""
    b, _, h, d = q.shape
    x = q.double().reshape(b, *grid, h, d)
    for axis, (length, n) in enumerate(zip(grid, agent_grid)):
        x = torch.movedim(torch.tensordot(_pool_matrix(length, n), torch.movedim(x, 1 + axis, 0), dims=1), 0, 1 + axis)
    return x.reshape(b, math.prod(agent_grid), h, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("text", [0, 6], ids=["no-text", "text6"])
@pytest.mark.parametrize("grid", [(5, 7), (1, 9), (3, 4, 5)], ids=["5x7", "1x9", "3x4x5"])
def test_every_token_its_own_agent_matches_closed_form(grid, text, dtype):
    n = math.prod(grid)
    q, k, v = random_qkv(n, dtype)
    tx = _text(text, dtype) if text else None
    call = AttendCall(grid=grid, extra_k=tx and tx[0], extra_v=tx and tx[1], extra_mask=tx and tx[2])
    method = make_method("agent", ratio=1.0, dense_fallback=False)
    assert method.config.agent_grid(grid) == grid
    out = method.attend(q, k, v, call)
    ref = _closed_form(q, k, v, q, 8**-0.5, 0.3, 0.075, tx)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])


AGENT_CASES = [
    ((16, 16), dict(), (4, 4)),
    ((15, 17), dict(), (4, 4)),
    ((12, 20), dict(ratio=0.25), (6, 10)),
    ((9, 11), dict(agents=12), (3, 4)),
    ((4, 12, 10), dict(agents=(2, 3, 3)), (2, 3, 3)),
    ((5, 8, 8), dict(ratio=1 / 8, scale_power=0.5, shortcut=0.0), (2, 4, 4)),
    ((1, 32), dict(ratio=1 / 8), (1, 4)),
]


@pytest.mark.parametrize("text", [0, 5], ids=["no-text", "text5"])
@pytest.mark.parametrize(
    "grid, knobs, agent_grid", AGENT_CASES, ids=lambda c: "x".join(map(str, c)) if isinstance(c, tuple) else None
)
def test_typical_ratios_match_independent_implementation(grid, knobs, agent_grid, text):
    n = math.prod(grid)
    q, k, v = random_qkv(n, seed=n)
    tx = _text(text) if text else None
    method = make_method("agent", **knobs)
    assert method.config.agent_grid(grid) == agent_grid
    call = AttendCall(grid=grid, extra_k=tx and tx[0], extra_v=tx and tx[1], extra_mask=tx and tx[2], scale=0.4)
    out = method.attend(q, k, v, call)
    c = method.config
    ref = _closed_form(q, k, v, _pooled_agents(q, grid, agent_grid), 0.4, c.scale_power, c.shortcut, tx)
    torch.testing.assert_close(out.double(), ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])


def test_bf16_typical_ratio():
    grid = (15, 17)
    q, k, v = random_qkv(math.prod(grid), torch.bfloat16)
    out = make_method("agent").attend(q, k, v, AttendCall(grid=grid))
    assert out.dtype == torch.bfloat16
    ref = _closed_form(q, k, v, _pooled_agents(q, grid, (4, 4)), 8**-0.5, 0.3, 0.075)
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("text", [0, 4], ids=["no-text", "text4"])
def test_dense_fallback_when_agents_save_nothing(text):
    """AgentSD's rule: with 2 * n_agents >= N the layer runs plain softmax attention."""
    grid = (3, 4)
    q, k, v = random_qkv(12)
    tx = _text(text) if text else (None, None, None)
    method = make_method("agent", ratio=0.5)
    out = method.attend(q, k, v, AttendCall(grid=grid, extra_k=tx[0], extra_v=tx[1], extra_mask=tx[2]))
    ref, _ = reference_attention(q, k, v, extra_k=tx[0], extra_v=tx[1], extra_mask=tx[2])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    forced = make_method("agent", ratio=0.5, dense_fallback=False).attend(q, k, v, AttendCall(grid=grid))
    assert not torch.allclose(forced, reference_attention(q, k, v)[0], atol=1e-3)


@pytest.mark.parametrize(
    "grid, knobs, expected",
    [
        ((128, 128), dict(), (32, 32)),
        ((64, 96), dict(), (16, 24)),
        ((16, 32, 32), dict(ratio=1 / 64), (4, 8, 8)),
        ((1, 64, 64), dict(), (1, 16, 16)),  # a single frame is not pooled
        ((8, 8), dict(agents=4), (2, 2)),
        ((8, 8), dict(agents=(3, 20)), (3, 8)),  # clamped to the grid
        ((5, 7), dict(agents=1000), (5, 7)),
    ],
    ids=["128x128", "64x96", "3d", "1-frame", "target-count", "tuple-clamped", "target-above-n"],
)
def test_agent_grid(grid, knobs, expected):
    assert make_method("agent", **knobs).config.agent_grid(grid) == expected


@pytest.mark.parametrize(
    "knobs, error, match",
    [
        (dict(ratio=0), ValueError, r"ratio=0 must be a number in \(0, 1\]"),
        (dict(ratio=1.5), ValueError, r"ratio=1.5 must be a number in \(0, 1\]"),
        (dict(agents=0), ValueError, r"agents=0 must be >= 1"),
        (dict(agents=(2, 2, 2, 2)), ValueError, r"1 to 3 ints"),
        (dict(scale_power=0), ValueError, r"scale_power=0 must be a number in \(0, 2\]"),
        (dict(shortcut=-0.1), ValueError, r"shortcut=-0.1 must be a finite number >= 0"),
        (dict(dense_fallback="yes"), TypeError, r"dense_fallback='yes' must be a bool"),
        (dict(agent_ratio=0.5), TypeError, r"unknown knob\(s\) \['agent_ratio'\]"),
    ],
    ids=["zero-ratio", "ratio-above-1", "zero-agents", "4d-agents", "zero-power", "neg-shortcut", "str-flag", "typo"],
)
def test_bad_config_is_rejected(knobs, error, match):
    with pytest.raises(error, match=match):
        get_method("agent").make_config(**knobs)


def test_dimensionality_mismatch_is_named():
    with pytest.raises(ValueError, match=r"agent agents=\(2, 2\) is 2-D but this model's token grid is 3-D"):
        make_method("agent", agents=(2, 2)).check_ndim(3)


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, torch
    from torch.profiler import ProfilerActivity, profile
    from diffattn.methods import AttendCall, get_method

    def status(key):  # kB
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

    def peak_growth(fn):
        # writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss = status("VmRSS:")
        fn()
        return (status("VmHWM:") - rss) * 1024

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 16384, 8, 64, generator=g) for _ in range(3))
    cls = get_method("agent")
    method = cls(cls.make_config())
    call = AttendCall(grid=(128, 128))
    cold = peak_growth(lambda: method.attend(q, k, v, call))
    warm = peak_growth(lambda: method.attend(q, k, v, call))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        method.attend(q, k, v, call)
    largest = max(max(e.cpu_memory_usage, 0) for e in prof.events())
    probe = peak_growth(lambda: torch.ones(256 * 2**20 // 4))  # proves the probe sees a 256 MiB tensor
    print(json.dumps({"cold": cold, "warm": warm, "largest_op_alloc": largest, "probe": probe}))
    """
)


@pytest.mark.slow
def test_no_dense_score_matrix_at_16k_tokens():
    """N = 16384, 8 heads, d = 64: a dense score matrix would be 16384^2 * 4 B = 1 GiB per head."""
    res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.strip().splitlines()[-1])
    mib = {key: round(value / 2**20, 1) for key, value in m.items()}
    print(f"agent at N=16384, MiB (cold/warm peak RSS growth, largest allocation, probe): {mib}")
    score = 16384**2 * 4
    assert m["probe"] >= 200 * 2**20, mib  # the RSS probe does see a 256 MiB tensor
    assert m["cold"] < score / 8 and m["warm"] < score / 8, mib
    assert 0 < m["largest_op_alloc"] < score / 8, mib


# --- every tiny family --------------------------------------------------------------------------


def test_runs_on_every_family_and_changes_output(tiny):
    name, pipe, base = tiny
    with diffattn.attention(pipe, "agent", ratio=0.25, preset=False) as h:  # every layer, every step
        out = tiny_output(pipe, name)
    stats = h.stats()
    assert stats and all(s.sparse > 0 and s.fallback == 0 and s.dense == 0 for s in stats.values()), stats
    assert h.sparse_calls > 0 and h.fallback_calls == 0
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, base, atol=1e-4)


def test_default_is_agentsds_early_steps_schedule(tiny):
    """No knobs: the family preset runs agents on the first 40% of the steps (step 0 of the tiny
    pipelines' 2), dense afterwards, on the preset's layers."""
    name, pipe, base = tiny
    with diffattn.attention(pipe, "agent") as h:
        out = tiny_output(pipe, name)
    assert h.preset is not None and h.preset.steps == (0.0, 0.4)
    stats = h.stats()
    assert stats and all(s.sparse > 0 and s.dense > 0 and s.fallback == 0 for s in stats.values()), stats
    if name == "tiny-sd":
        assert all(".down_blocks.0." in n for n in stats)  # the highest-resolution level only
    assert not torch.allclose(out, base, atol=1e-4)


def test_apply_then_remove_is_bit_identical(tiny):
    name, pipe, base = tiny
    before = processors(pipe)
    handle = diffattn.apply_attention(pipe, "agent", ratio=0.25)
    tiny_output(pipe, name)
    handle.remove()
    after = processors(pipe)
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    assert torch.equal(tiny_output(pipe, name), base)
