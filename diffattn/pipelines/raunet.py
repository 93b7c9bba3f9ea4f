"""HiDiffusion's RAU-Net (resolution-aware U-Net) for SD 1.5 / 2.1 and SDXL UNets.

At resolutions above training, the deep UNet blocks see more tokens than they were trained on and
duplicate objects. RAU-Net shrinks the feature map early and grows it back late, so the deep blocks
see about the training resolution, during the first denoising steps only (then the full UNet refines).
Read from HiDiffusion's public code (megvii-research/HiDiffusion, ``hidiffusion.py``; facts, not code):
  - **conv switch**: one down block's downsampler convolution (kernel 3, stride 2, padding 1) runs
    with stride 4, padding 2, dilation 2 (a 4x downsample); the up path follows by itself because
    the UNet forwards each skip connection's size to its upsampler (HiDiffusion forces that with
    ``unet.num_upsamplers += 12``; nearest interpolation to an explicit 2x size equals the default).
  - **pool switch**: a cross-attention down block average-pools (2x2, ceil mode) the output of its
    first (resnet, attention) pair; the mirrored up block resizes (bicubic) back to the size before
    pooling after its pair number ``len(down pairs) - 1``.
  - SD 1.5/2.1: conv switch at ``down_blocks.0`` for steps ``< T1``, pool switch at ``down_blocks.1`` /
    ``up_blocks.2`` for steps ``< T2``. SDXL: pool switch at ``down_blocks.1`` / ``up_blocks.1`` for
    ``< T1``, conv switch at ``down_blocks.1``'s downsampler for ``< T2``.
  - ``T = int(ratio * steps)``; ratios by resolution: (T1, T2) = (0.4, 0.0) below 4x the training
    latent size on a side (SD 1.5 1024², SDXL 2048²), (0.7, 0.3) from 4x (SD 1.5 2048², SDXL 4096²).
  - SDXL below 4x is "aggressive": the conv switch runs on steps ``[0, 8/50 n)`` and the pool switch
    on ``[8/50 n, T1)`` instead.
Steps are counted as HiDiffusion counts them: from the first denoising call of a generation, against
the number of steps the pipeline actually runs (its ``_num_timesteps``, which img2img / inpaint set to
the steps left after ``strength``). So an img2img run at strength 0.7 over 50 steps runs 35 steps and
switches for the first ``int(0.4 * 35) = 14`` of them, as HiDiffusion does (issue 23: the step looked up
in the scheduler's full list of 50 switched only 5). Each call's step is the position of its timestep
in ``scheduler.timesteps`` minus that of the generation's first call; a new generation starts when the
scheduler's timesteps are set again (every pipeline call) or the position goes back. A pipeline
without ``_num_timesteps`` runs to the end of the schedule.
Differences, on purpose: the step comes from the call's timestep, not a count of forward calls (which
breaks with more than one call per step: separate CFG passes, FreeSwim's extra pass), so a scheduler
that repeats a timestep (Heun's second-order steps, PNDM's first PLMS step) counts both calls of it as
the first one's step, one step off HiDiffusion's count at most; nothing switches at or below the
training size; and a UNet layout other than those two is refused instead of guessed.

Every change is an undo record (`SwapSubmodule`, `ForwardPreHook`, `SetAttr`) joined to an
`AttentionHandle`, so removal is bit-exact and a failed install leaves the pipeline as it was.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..patch import AttentionHandle, ForwardPreHook, SetAttr, SwapSubmodule, UndoRecord, apply_attention
from ..patch.runtime import NearestTimestep

#: HiDiffusion's aggressive schedule for SDXL below 4x: the conv switch ends at step 8 of 50
AGGRESSIVE_STEP = 8 / 50


@dataclasses.dataclass(frozen=True)
class RAUNetConfig:
    """RAU-Net knobs; None = HiDiffusion's value for the model and the resolution of each call.

    t1, t2: fractions of the denoising steps (in [0, 1]) during which the T1 / T2 switches are on.
    aggressive: SDXL's aggressive schedule (HiDiffusion's default below 4x the training size).
    """

    t1: float | None = None
    t2: float | None = None
    aggressive: bool | None = None

    def __post_init__(self) -> None:
        for name in ("t1", "t2"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r} must be a fraction of the steps in [0, 1] (or None)")
        if self.aggressive is not None and not isinstance(self.aggressive, bool):
            raise TypeError(f"aggressive={self.aggressive!r} must be True, False or None")


@dataclasses.dataclass(frozen=True)
class RAUNetLayout:
    """Where the two switches sit in one UNet (indices into ``down_blocks`` / ``up_blocks``)."""

    family: str  # "sd" or "sdxl"
    conv_block: int  # down block whose downsampler conv becomes a 4x downsample
    pool_block: int  # down block pooled after its first pair
    up_block: int  # up block that resizes back, after pair ``up_pair``
    up_pair: int
    sample_size: int  # training latent size (UNet config)

    def ratios(self, height: int, width: int, config: RAUNetConfig) -> tuple[float, float, bool]:
        """(t1, t2, aggressive) for a latent of ``height x width``."""
        large = min(height, width) >= 4 * self.sample_size
        t1, t2 = (0.7, 0.3) if large else (0.4, 0.0)
        aggressive = self.family == "sdxl" and not large
        return (
            t1 if config.t1 is None else config.t1,
            t2 if config.t2 is None else config.t2,
            aggressive if config.aggressive is None else config.aggressive,
        )

    def active(self, step: int, n: int, height: int, width: int, config: RAUNetConfig) -> tuple[bool, bool]:
        """(conv switch on, pool switch on) at ``step`` of ``n`` for a latent of ``height x width``."""
        if max(height, width) <= self.sample_size:
            return False, False
        t1, t2, aggressive = self.ratios(height, width, config)
        if aggressive:
            cut = int(AGGRESSIVE_STEP * n)
            conv_steps, pool_steps = range(0, cut), range(cut, int(t1 * n))
        elif self.family == "sd":
            conv_steps, pool_steps = range(0, int(t1 * n)), range(0, int(t2 * n))
        else:
            conv_steps, pool_steps = range(0, int(t2 * n)), range(0, int(t1 * n))
        return step in conv_steps, step in pool_steps


def _describe(unet: nn.Module) -> str:
    down = ", ".join(type(b).__name__ for b in getattr(unet, "down_blocks", ()))
    return f"{type(unet).__name__} with down blocks ({down})"


def _plain_downsampler_conv(block: nn.Module) -> nn.Conv2d | None:
    samplers = getattr(block, "downsamplers", None)
    conv = getattr(samplers[0], "conv", None) if samplers else None
    if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.padding == (1, 1):
        return conv
    return None


def raunet_layout(unet: nn.Module) -> RAUNetLayout:
    """The RAU-Net switches of ``unet``; a ValueError naming its layout if it is not SD 1.5/2.1- or
    SDXL-shaped (HiDiffusion's two layouts; any depth and width of them is accepted)."""
    known = (
        "RAU-Net knows two UNet layouts: SD 1.5/2.1 (down_blocks.0 and .1 CrossAttnDownBlock2D, down_blocks.0 "
        "with a stride-2 3x3 downsampler conv) and SDXL (down_blocks.0 DownBlock2D, down_blocks.1 "
        "CrossAttnDownBlock2D with a stride-2 3x3 downsampler conv); in both the up block mirroring "
        "down_blocks.1 has one more attention than it"
    )
    down, up = list(getattr(unet, "down_blocks", ())), list(getattr(unet, "up_blocks", ()))
    sample_size = getattr(getattr(unet, "config", None), "sample_size", None)
    if len(down) < 2 or len(up) != len(down) or not isinstance(sample_size, int) or not hasattr(unet, "num_upsamplers"):
        raise ValueError(f"RAU-Net does not know the block layout of {_describe(unet)}; {known}")
    sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    attns = [len(getattr(b, "attentions", ())) for b in down]
    mirror = len(up) - 2
    ok_mirror = attns[1] >= 1 and len(getattr(up[mirror], "attentions", ())) == attns[1] + 1
    if sdxl:
        ok = attns[0] == 0 and _plain_downsampler_conv(down[1]) is not None and ok_mirror
        conv_block = 1
    else:
        ok = attns[0] >= 1 and _plain_downsampler_conv(down[0]) is not None and ok_mirror
        conv_block = 0
    if not ok:
        family = "SDXL" if sdxl else "SD 1.5/2.1"
        raise ValueError(f"RAU-Net does not know the block layout of {_describe(unet)} ({family} embeddings); {known}")
    return RAUNetLayout("sdxl" if sdxl else "sd", conv_block, 1, mirror, attns[1] - 1, sample_size)


class _State:
    """Per UNet: the switches of the current call (thread-local, set by the pre-hook)."""

    def __init__(self, layout: RAUNetLayout, config: RAUNetConfig, scheduler: Any, pipe: Any = None) -> None:
        self.layout, self.config, self.scheduler = layout, config, scheduler
        # weak: the UNet's hook must not keep the pipeline alive (pipe -> unet -> hook -> state -> pipe)
        self.pipe = weakref.ref(pipe) if pipe is not None else None
        self.local = threading.local()
        self.nearest = NearestTimestep()

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        sample = kwargs.get("sample", args[0] if args else None)  # [B, C, H, W]
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        conv = pool = False
        run = self.run_step(timestep) if sample is not None else None
        if run is not None:
            conv, pool = self.layout.active(*run, *sample.shape[-2:], self.config)
        self.local.conv, self.local.pool = conv, pool
        self.local.sizes = []

    def run_step(self, timestep: Any) -> tuple[int, int] | None:
        """``(step, steps)``: this call's step counted from the generation's first call, and the number of
        steps the pipeline runs (see the module docstring); None without a timestep or set timesteps."""
        timesteps = getattr(self.scheduler, "timesteps", None)
        if timestep is None or timesteps is None or len(timesteps) == 0:
            return None
        t = float(timestep.flatten()[0]) if isinstance(timestep, Tensor) else float(timestep)
        index = self.nearest(timesteps, t)
        local = self.local
        if getattr(local, "timesteps", None) is not timesteps or index < local.last:  # a new generation
            local.timesteps, local.start = timesteps, index
        local.last = index
        rest = len(timesteps) - local.start
        pipe = self.pipe() if self.pipe is not None else None
        steps = getattr(pipe, "_num_timesteps", None)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= rest:
            steps = rest  # no (or an impossible) count from the pipeline: it runs to the end of the schedule
        return index - local.start, steps

    @property
    def conv(self) -> bool:
        return getattr(self.local, "conv", False)

    @property
    def pool(self) -> bool:
        return getattr(self.local, "pool", False)


class _Shell(nn.Module):
    """Stands in for ``original`` in its parent: shares its parameters, buffers and children (so
    state_dict keys, ``.to()`` and module names stay the same) and calls it."""

    def __init__(self, original: nn.Module, state: _State) -> None:
        super().__init__()
        self._parameters = original._parameters
        self._buffers = original._buffers
        self._modules = original._modules
        object.__setattr__(self, "original", original)
        object.__setattr__(self, "state", state)


class _ResolutionAwareConv(_Shell):
    """The downsampler conv: 4x (stride and padding and dilation doubled) while the conv switch is on."""

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W]
        conv = self.original
        if not self.state.conv:
            return conv(x)
        stride = tuple(2 * s for s in conv.stride)
        padding = tuple(2 * p for p in conv.padding)
        dilation = tuple(2 * d for d in conv.dilation)
        return F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation, conv.groups)


def _map_sample(out: Any, fn: Any) -> Any:
    """Apply ``fn`` to the hidden states of a Transformer2DModel output (tuple or output object)."""
    if isinstance(out, tuple):
        return (fn(out[0]), *out[1:])
    return dataclasses.replace(out, sample=fn(out.sample))


class _PoolAfter(_Shell):
    """The first attention of the pool block: 2x2 average pool of its output while the pool switch is on."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.original(*args, **kwargs)
        if not self.state.pool:
            return out

        def pool(h: Tensor) -> Tensor:  # [B, C, H, W]
            self.state.local.sizes.append(tuple(h.shape[-2:]))
            return F.avg_pool2d(h, kernel_size=(2, 2), ceil_mode=True)

        return _map_sample(out, pool)


class _ResizeAfter(_Shell):
    """An attention of the mirrored up block: bicubic back to the size before pooling."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.original(*args, **kwargs)
        sizes = getattr(self.state.local, "sizes", None)
        if not self.state.pool or not sizes:
            return out
        size = sizes.pop()
        return _map_sample(out, lambda h: F.interpolate(h, size=size, mode="bicubic"))


def raunet_records(pipe: Any, config: RAUNetConfig | None = None) -> list[UndoRecord]:
    """The undo records that install RAU-Net on ``pipe.unet`` (nothing is changed until applied).

    A ValueError if the pipeline has no UNet with a known layout, or no scheduler to read steps from.
    """
    config = config or RAUNetConfig()
    if not isinstance(config, RAUNetConfig):
        raise TypeError(f"config must be a RAUNetConfig, got {type(config).__name__}")
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, nn.Module):
        raise ValueError(
            f"RAU-Net needs a UNet pipeline (SD 1.5/2.1 or SDXL); {type(pipe).__name__} has no unet. "
            "For DiTs use the two-stage generate_highres"
        )
    unet = getattr(unet, "_orig_mod", unet)
    layout = raunet_layout(unet)
    if getattr(pipe, "scheduler", None) is None:
        raise ValueError("RAU-Net needs the pipeline's scheduler to know the denoising step")
    state = _State(layout, config, pipe.scheduler, pipe)
    sampler = unet.down_blocks[layout.conv_block].downsamplers[0]
    pool_parent = unet.down_blocks[layout.pool_block].attentions
    up_parent = unet.up_blocks[layout.up_block].attentions
    return [
        ForwardPreHook(unet, state.pre_hook, with_kwargs=True),
        # forward every skip's size to the upsamplers, so the up path follows a 4x downsample
        SetAttr(unet, "num_upsamplers", unet.num_upsamplers + 12),
        SwapSubmodule(sampler, "conv", _ResolutionAwareConv(sampler.conv, state)),
        SwapSubmodule(pool_parent, "0", _PoolAfter(pool_parent[0], state)),
        SwapSubmodule(up_parent, str(layout.up_pair), _ResizeAfter(up_parent[layout.up_pair], state)),
    ]


def apply_raunet(pipe: Any, handle: AttentionHandle | None = None, **knobs: Any) -> AttentionHandle:
    """Install RAU-Net on ``pipe``, joined to ``handle`` (e.g. the one of ``apply_attention(pipe, "msw")``)
    or to a new ``dense`` handle; ``handle.remove()`` undoes both. All or nothing: on any error the
    pipeline (and ``handle``) stay exactly as they were.

    Knobs: ``t1``, ``t2``, ``aggressive`` (`RAUNetConfig`).
    """
    records = raunet_records(pipe, RAUNetConfig(**knobs))
    own = handle is None
    if handle is None:
        handle = apply_attention(pipe, "dense")
    try:
        handle.extend(records)
    except BaseException:
        if own:
            handle.remove()
        raise
    return handle


__all__ = ["RAUNetConfig", "RAUNetLayout", "apply_raunet", "raunet_layout", "raunet_records"]
