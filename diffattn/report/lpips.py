"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric") with a fixed
architecture built here, so a weights file only ever supplies tensors (see `weights`).

Two backbones, as in the LPIPS package and torchmetrics: ``alex`` (AlexNet features, its default) and ``vgg`` (VGG16
features). The module names follow theirs, so the ``state_dict()`` of ``lpips.LPIPS(net=...)`` or of torchmetrics'
LPIPS network, saved with ``safetensors.torch.save_file``, loads as is: ``net.slice{1..5}.{i}.weight|bias`` (``i`` =
the layer's index in torchvision's ``features``) and ``lin{k}.model.1.weight`` (a 1x1 conv per tapped layer).

Distance of images ``x, y`` in [0, 1], ``[N, 3, H, W]``: scale to [-1, 1], shift/scale per channel, take the ReLU
outputs of the 5 tapped layers, normalise each over channels, square the difference, weight channels by the 1x1
conv, average over space, sum over layers -> ``[N]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# (in, out, kernel, stride, padding) of AlexNet's convolutions, by their index in torchvision's ``features``
_ALEX_CONVS = {0: (3, 64, 11, 4, 2), 3: (64, 192, 5, 1, 2), 6: (192, 384, 3, 1, 1), 8: (384, 256, 3, 1, 1),
               10: (256, 256, 3, 1, 1)}  # fmt: skip
_ALEX_POOLS = (2, 5)
_ALEX_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))  # [start, end) of features per tapped layer
_VGG_CHANNELS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
CHANNELS = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}


def _alex_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(12):
        if i in _ALEX_CONVS:
            c_in, c_out, k, s, p = _ALEX_CONVS[i]
            layers.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
        elif i in _ALEX_POOLS:
            layers.append(nn.MaxPool2d(3, stride=2))
        else:
            layers.append(nn.ReLU())
    return layers


def _vgg_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    c_in = 3
    for c in _VGG_CHANNELS:
        if c == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.ReLU()]
            c_in = int(c)
    return layers


class _Backbone(nn.Module):
    """The tapped backbone: ``slice{k}`` holds features ``[start, end)`` under their torchvision indices."""

    def __init__(self, net: str) -> None:
        super().__init__()
        layers, slices = (_alex_features(), _ALEX_SLICES) if net == "alex" else (_vgg_features(), _VGG_SLICES)
        for k, (start, end) in enumerate(slices, 1):
            seq = nn.Sequential()
            for i in range(start, end):
                seq.add_module(str(i), layers[i])
            self.add_module(f"slice{k}", seq)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for k in range(1, 6):
            x = getattr(self, f"slice{k}")(x)
            out.append(x)
        return out


class _Lin(nn.Module):
    """A 1x1 conv without bias; ``model.0`` is LPIPS's dropout (identity at evaluation), kept for the names."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance ``(images, refs) -> [N]`` for images ``[N, 3, H, W]`` in [0, 1]; always in eval mode."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in CHANNELS:
            raise ValueError(f"LPIPS net={net!r} is not one of {sorted(CHANNELS)}")
        self.net_type = net
        self.net = _Backbone(net)
        for k, c in enumerate(CHANNELS[net]):
            self.add_module(f"lin{k}", _Lin(c))
        # LPIPS's fixed input shift and scale (per RGB channel, for inputs in [-1, 1])
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # a metric: dropout must never be on

    def forward(self, images: Tensor, refs: Tensor) -> Tensor:
        if images.shape != refs.shape or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [N, 3, H, W] batches of one shape, got {tuple(images.shape)} and "
                             f"{tuple(refs.shape)}")  # fmt: skip
        a, b = ((2 * x.float() - 1 - self.shift) / self.scale for x in (images, refs))
        total = torch.zeros(images.shape[0], dtype=torch.float32, device=images.device)
        for k, (fa, fb) in enumerate(zip(self.net(a), self.net(b))):
            na = fa / torch.sqrt(1e-8 + (fa**2).sum(1, keepdim=True))  # unit length over channels
            nb = fb / torch.sqrt(1e-8 + (fb**2).sum(1, keepdim=True))
            total = total + getattr(self, f"lin{k}")((na - nb) ** 2).mean((1, 2, 3))
        return total


def _canonical(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The LPIPS package's state dict also names the 1x1 convs ``lins.{k}`` and may hold the (fixed) shift and
    scale buffers: keep one name per tensor."""
    out = {}
    for key, value in state.items():
        if key.startswith("scaling_layer."):
            continue
        if key.startswith("lins."):
            key = "lin" + key[len("lins.") :]
        out[key] = value
    return out


def lpips_from_state_dict(state: dict[str, Tensor], source: str | Path = "state dict") -> LPIPS:
    """An `LPIPS` with ``state``'s tensors (its backbone told by the first conv's shape); a ValueError naming the
    missing, unexpected or misshapen tensors if it is not LPIPS weights."""
    state = _canonical(state)
    first = state.get("net.slice1.0.weight")
    net = "vgg" if first is not None and tuple(first.shape) == (64, 3, 3, 3) else "alex"
    model = LPIPS(net)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        detail = "; ".join(
            f"{name}: {keys[:4]}{' ...' if len(keys) > 4 else ''}"
            for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
            if keys
        )
        raise ValueError(
            f"LPIPS weights {str(source)!r} do not fit the LPIPS alex/vgg architecture ({detail}); save the "
            "state_dict() of lpips.LPIPS(net='alex') (or 'vgg') with safetensors.torch.save_file"
        )
    model.load_state_dict(state)
    return model
