"""Agent attention as AgentSD (Agent-Attention, ``agentsd/``) applies it to Stable Diffusion, training-free.

Agent tokens ``A [B, n, H, D]`` are pooled image queries. Each agent first gathers from the keys,
then each query reads from the agents:

    V_A = softmax(A K^T s) V                      (n agents x (N image + T text) keys)
    out = softmax(Q A^T s^p) V_A + c V            (N queries x n agents)

Cost ``O(N n)``; no ``N x N`` tensor exists. What we took from AgentSD's code, and why:
  - agents are *merged queries*: AgentSD merges the normed hidden states (ToMe bipartite
    matching with one destination token per 4x4 region at steps < 20, ``agent_ratio=0.95``) and
    projects them with ``to_q``. ``to_q`` is linear, so that equals pooling the projected queries;
    we pool by adaptive average pooling over the token grid (deterministic, any grid, 2-D or 3-D)
    instead of similarity-driven merging (by design: no data-dependent matching, and every token
    keeps its own key and value). The default ``ratio=1/16`` is AgentSD's count (one agent per 4x4
    region), and the agent grid is rounded down per axis as AgentSD's destination grid is
    (``h // 4`` x ``w // 4``): exactly AgentSD's count where the grid divides by 4. Elsewhere AgentSD
    also keeps the source tokens its ``agent_ratio=0.95`` leaves unmerged as agents (22x14 tokens:
    its 5x3 destinations plus 1 = 16 agents, ours 5x3 = 15); ``round()`` (ties to even) gave 24.
  - scales: the first softmax uses the model scale ``s``; the second uses ``s ** scale_power`` with
    ``scale_power=0.3`` (AgentSD's ``k_scale2``): a sharper read-out compensates that agents are
    averages whose logits are smaller than single tokens'.
  - value shortcut ``c = 0.075`` (AgentSD's ``k_shortcut``): ``out += c * V`` keeps each token's
    own value, which the agents' averaging blurs.
  - fallback: AgentSD runs plain softmax attention when ``2 * n >= N`` (agents would save
    nothing); ``dense_fallback=True`` does the same, ``False`` forces the agent path (for tests).
  - schedule and layers: AgentSD uses agents on steps 0-19 of 50 and only on the
    highest-resolution UNet level (``max_downsample=1``); later steps run ToMe alone. That is a
    preset (``steps=``/``layers=``), not part of this method. We do not merge tokens (ToMe) for
    keys and values: diffattn keeps the model's token count.
Text tokens of joint attention (``call.extra_k/extra_v/extra_mask``) are extra keys of the
aggregation step: the agents gather from image and text keys alike (merged by log-sum-exp), so the
text reaches every image query through the agents, as dense attention mixes them in one softmax.
"""

from __future__ import annotations

import dataclasses
import math

import torch.nn.functional as F
from torch import Tensor

from ..kernels import attend_extra, dense_attention, merge_attention
from .base import AttendCall, AttentionMethod, FlopBound, axis_ints, pairs_bound, per_axis
from .naive import agent_attention, agent_pooled_queries, masked_attention
from .registry import register_method

_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Agent-attention knobs.

    ratio: agents per image token, in (0, 1] (AgentSD: 1/16, one agent per 4x4 region).
    agents: overrides ``ratio``: an int = target number of agents (>= 1), or a tuple = the agent
        grid per axis (clamped to the token grid).
    scale_power: exponent ``p`` of the read-out scale ``s ** p``, in (0, 2] (AgentSD: 0.3).
    shortcut: weight ``c`` of the value shortcut ``c * V``, >= 0 (AgentSD: 0.075).
    dense_fallback: plain attention when ``2 * n_agents >= N`` (AgentSD's rule).
    """

    ratio: float = 1 / 16
    agents: int | tuple[int, ...] | None = None
    scale_power: float = 0.3
    shortcut: float = 0.075
    dense_fallback: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, int | float) or not 0 < self.ratio <= 1:
            raise ValueError(f"ratio={self.ratio!r} must be a number in (0, 1]")
        if self.agents is not None:
            a = axis_ints("agents", self.agents)
            object.__setattr__(self, "agents", a if isinstance(self.agents, tuple | list) else a[0])
        p = self.scale_power
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 2:
            raise ValueError(f"scale_power={p!r} must be a number in (0, 2]")
        c = self.shortcut
        if isinstance(c, bool) or not isinstance(c, int | float) or not math.isfinite(c) or c < 0:
            raise ValueError(f"shortcut={c!r} must be a finite number >= 0")
        if not isinstance(self.dense_fallback, bool):
            raise TypeError(f"dense_fallback={self.dense_fallback!r} must be a bool (True or False)")

    @property
    def ndim(self) -> int | None:
        return len(self.agents) if isinstance(self.agents, tuple) else None

    def agent_grid(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """Agent grid for a token ``grid``: each axis shrunk by the same factor and rounded *down*, clamped
        to [1, axis] (AgentSD's rule: one destination token per full 4x4 region, ``h // 4`` x ``w // 4``
        at the default ratio 1/16; the count never exceeds ``ratio * N`` or ``agents``)."""
        if isinstance(self.agents, tuple):
            return tuple(min(a, length) for a, length in zip(per_axis("agents", self.agents, len(grid)), grid))
        n = math.prod(grid)
        target = self.agents if self.agents is not None else self.ratio * n
        live = [length for length in grid if length > 1]
        if not live or target >= n:
            return tuple(grid)
        factor = (target / n) ** (1 / len(live))
        # the epsilon keeps exact products (64 * (1/64) ** (1/3) = 16) from flooring one below
        return tuple(min(length, max(1, math.floor(length * factor + 1e-9))) for length in grid)


def pool_queries(q: Tensor, grid: tuple[int, ...], agent_grid: tuple[int, ...]) -> Tensor:
    """Adaptive average pooling of ``q [B, S, H, D]`` over the grid -> agents ``[B, n, H, D]``."""
    b, _, h, d = q.shape
    nd = len(grid)
    # [B, *grid, H*D] viewed channels-first: no copy, the pooling reads the channels-last strides
    x = q.reshape(b, *grid, h * d).movedim(-1, 1)
    pooled = _POOL[nd](x, agent_grid)  # [B, H*D, *agent_grid]
    return pooled.movedim(1, -1).reshape(b, math.prod(agent_grid), h, d).contiguous()


@register_method
class AgentAttention(AttentionMethod):
    """AgentSD agent attention over the image tokens; text keys join the agents' aggregation."""

    name = "agent"
    Config = AgentConfig

    def flop_bound(self, grid: tuple[int, ...], extra_tokens: int = 0) -> FlopBound:
        """Agents score every key (image + text), then every query scores the agents; dense where
        ``dense_fallback`` applies."""
        grid = tuple(grid)
        n, agents = math.prod(grid), math.prod(self.config.agent_grid(grid))
        if self.config.dense_fallback and 2 * agents >= n:
            return pairs_bound(grid, extra_tokens, n * (n + extra_tokens), "dense (fallback: 2 x agents >= N)")
        pairs = agents * (n + extra_tokens) + n * agents
        return pairs_bound(grid, extra_tokens, pairs, f"N / (2 x {agents} agents)")
    example_knobs = {"ratio": 0.25}
    invalid_knobs = (
        ({"ratio": 0}, ValueError, r"ratio=0 must be a number in \(0, 1\]"),
        ({"ratio": 1.5}, ValueError, r"ratio=1.5 must be a number in \(0, 1\]"),
        ({"agents": 0}, ValueError, r"agents=0 must be >= 1"),
        ({"agents": (2, 2, 2, 2)}, ValueError, r"1 to 3 ints"),
        ({"scale_power": 0}, ValueError, r"scale_power=0 must be a number in \(0, 2\]"),
        ({"shortcut": -0.1}, ValueError, r"shortcut=-0.1 must be a finite number >= 0"),
        ({"dense_fallback": "yes"}, TypeError, r"dense_fallback='yes' must be a bool"),
        ({"agent_ratio": 0.5}, TypeError, r"unknown knob\(s\) \['agent_ratio'\]"),
    )

    def attend(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        grid = tuple(call.grid)
        n = math.prod(grid)
        if q.shape[1] != n:
            raise ValueError(f"sequence length {q.shape[1]} does not match the grid {grid}")
        agent_grid = self.config.agent_grid(grid)
        text = []
        if call.extra_k is not None:
            if call.extra_v is None:
                raise ValueError("extra_k was given without extra_v")
            text = [(call.extra_k, call.extra_v, call.extra_mask)]
        if self.config.dense_fallback and 2 * math.prod(agent_grid) >= n:
            parts = [dense_attention(q, k, v, scale=call.scale, backend=call.backend)]
            parts += [attend_extra(q, *t, call.scale, call.backend) for t in text]
            return merge_attention(parts)[0]
        scale = q.shape[-1] ** -0.5 if call.scale is None else call.scale
        agents = pool_queries(q, grid, agent_grid)  # [B, n_agents, H, D]
        parts = [dense_attention(agents, k, v, scale=scale, backend=call.backend)]
        parts += [attend_extra(agents, *t, scale, call.backend) for t in text]
        agent_v, _ = merge_attention(parts)  # [B, n_agents, H, D]
        out, _ = dense_attention(q, agents, agent_v, scale=scale**self.config.scale_power, backend=call.backend)
        if self.config.shortcut:
            out = out + self.config.shortcut * v
        return out

    def oracle(self, q: Tensor, k: Tensor, v: Tensor, call: AttendCall) -> Tensor:
        grid, c = tuple(call.grid), self.config
        agent_grid = c.agent_grid(grid)
        extra = (call.extra_k, call.extra_v, call.extra_mask) if call.extra_k is not None else None
        if c.dense_fallback and 2 * math.prod(agent_grid) >= math.prod(grid):  # AgentSD's rule: plain attention
            return masked_attention(q, k, v, None, extra, call.scale)
        scale = q.shape[-1] ** -0.5 if call.scale is None else call.scale
        agents = agent_pooled_queries(q, grid, agent_grid)
        return agent_attention(q, k, v, agents, scale, c.scale_power, c.shortcut, extra)

    @classmethod
    def dense_limit(cls, grid: tuple[int, ...]) -> AgentConfig:
        return AgentConfig(ratio=1.0)  # as many agents as tokens: AgentSD's fallback runs plain attention
