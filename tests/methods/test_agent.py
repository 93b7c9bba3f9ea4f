"""`agent`: AgentSD agent attention against its closed form and independent pooling (`diffattn.methods.naive`).
Bad knobs, apply/remove and every-family runs: test_method_contract.py (`AgentAttention.example_knobs`, ...)."""

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
from diffattn.methods import AttendCall
from diffattn.methods.naive import agent_attention, agent_pooled_queries
from diffattn.tiny import tiny_output

from ..helpers import make_method, random_qkv, random_text

TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("text", [0, 6], ids=["no-text", "text6"])
@pytest.mark.parametrize("grid", [(5, 7), (1, 9), (3, 4, 5)], ids=["5x7", "1x9", "3x4x5"])
def test_every_token_its_own_agent_matches_closed_form(grid, text, dtype):
    n = math.prod(grid)
    q, k, v = random_qkv(n, dtype)
    tx = random_text(text, dtype, seed=99) if text else None
    call = AttendCall(grid=grid, extra_k=tx and tx[0], extra_v=tx and tx[1], extra_mask=tx and tx[2])
    method = make_method("agent", ratio=1.0, dense_fallback=False)
    assert method.config.agent_grid(grid) == grid
    out = method.attend(q, k, v, call)
    ref = agent_attention(q, k, v, q, 8**-0.5, 0.3, 0.075, tx)
    torch.testing.assert_close(out.double(), ref, atol=TOL[dtype], rtol=TOL[dtype])


AGENT_CASES = [
    ((16, 16), dict(), (4, 4)),
    ((15, 17), dict(), (3, 4)),
    ((12, 20), dict(ratio=0.25), (6, 10)),
    ((9, 11), dict(agents=12), (3, 3)),  # rounded down: never more agents than asked
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
    tx = random_text(text, seed=99) if text else None
    method = make_method("agent", **knobs)
    assert method.config.agent_grid(grid) == agent_grid
    call = AttendCall(grid=grid, extra_k=tx and tx[0], extra_v=tx and tx[1], extra_mask=tx and tx[2], scale=0.4)
    out = method.attend(q, k, v, call)
    c = method.config
    ref = agent_attention(q, k, v, agent_pooled_queries(q, grid, agent_grid), 0.4, c.scale_power, c.shortcut, tx)
    torch.testing.assert_close(out.double(), ref, atol=TOL[torch.float32], rtol=TOL[torch.float32])


def test_bf16_typical_ratio():
    grid = (15, 17)
    q, k, v = random_qkv(math.prod(grid), torch.bfloat16)
    out = make_method("agent").attend(q, k, v, AttendCall(grid=grid))
    assert out.dtype == torch.bfloat16
    ref = agent_attention(q, k, v, agent_pooled_queries(q, grid, (3, 4)), 8**-0.5, 0.3, 0.075)
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("text", [0, 4], ids=["no-text", "text4"])
def test_dense_fallback_when_agents_save_nothing(text):
    """AgentSD's rule: with 2 * n_agents >= N the layer runs plain softmax attention."""
    grid = (3, 4)
    q, k, v = random_qkv(12)
    tx = random_text(text, seed=99) if text else (None, None, None)
    method = make_method("agent", ratio=0.6)  # 2 x 3 agents: 2 * 6 >= 12
    out = method.attend(q, k, v, AttendCall(grid=grid, extra_k=tx[0], extra_v=tx[1], extra_mask=tx[2]))
    ref, _ = reference_attention(q, k, v, extra_k=tx[0], extra_v=tx[1], extra_mask=tx[2])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    forced = make_method("agent", ratio=0.6, dense_fallback=False).attend(q, k, v, AttendCall(grid=grid))
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
        ((22, 14), dict(), (5, 3)),  # AgentSD: 22 // 4 x 14 // 4 destinations (round() gave 6 x 4 = 24)
        ((15, 17), dict(), (3, 4)),
        ((16, 16, 16), dict(ratio=1 / 64), (4, 4, 4)),
    ],
    ids=["128x128", "64x96", "3d", "1-frame", "target-count", "tuple-clamped", "target-above-n", "22x14-agentsd",
         "15x17", "3d-exact-cube-root"],
)
def test_agent_grid(grid, knobs, expected):
    assert make_method("agent", **knobs).config.agent_grid(grid) == expected


def _agentsd_agents(h: int, w: int, sx: int = 4, sy: int = 4, agent_ratio: float = 0.95) -> tuple[int, int]:
    """AgentSD's agent count, re-stated from its ``bipartite_soft_matching_random2d``: one destination per full
    sy x sx region; ``agent_r = min(sources, int(N * agent_ratio))`` sources merge, the rest stay agents.
    Returns (destinations, agents)."""
    n, dst = h * w, (h // sy) * (w // sx)
    return dst, n - min(n - dst, int(n * agent_ratio))


def test_agent_count_follows_agentsd():
    """issue 23: ``round()`` gave 24 agents on 22x14 where AgentSD has 16. The rule now is AgentSD's destination grid
    ``h // 4 x w // 4``: equal to AgentSD's count where the grid divides by 4, its destinations elsewhere."""
    method = make_method("agent")
    for h in range(4, 41):
        for w in range(4, 41):
            dst, agents = _agentsd_agents(h, w)
            ours = math.prod(method.config.agent_grid((h, w)))
            assert ours == dst, (h, w)
            if h % 4 == 0 and w % 4 == 0:
                assert ours == agents, (h, w)
    assert _agentsd_agents(22, 14) == (15, 16)


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
