"""FID / CLIP / scorer evaluation over a prompt list for dense and each method config, data-parallel.

Under ``torchrun`` or ``accelerate launch`` every process renders a contiguous shard of the prompts
(accelerate ``split_between_processes``, no padding, so no sample counts twice), and per-sample
results are gathered with ``gather_object``. Sample ``i`` always uses seed ``seed + i`` and features
are computed per sample, so every image, feature and score equals a single-process run bit for bit;
FID then agrees to rounding (LAPACK's eigen solver is not bitwise reproducible across processes).

Injection points (the embedded tiny model plugs in here):
  - ``feature_extractor``: ``nn.Module`` images ``[N, C, H, W]`` -> ``[N, F]`` for FID (or Inception
    weights from a path, see `quality.load_feature_extractor`); FID of each config is against dense;
  - ``scorer``: ``(images [N, C, H, W], prompts) -> [N]`` correct (bool) or score; accuracy = mean;
  - ``clip``: ``(images, prompts) -> [N]`` CLIP scores (or a local CLIP directory).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .quality import TextImageMetric, as_batch, extract_features, fid_from_features
from .runner import RunConfig, patched, render, validate_configs

Scorer = Callable[[Tensor, Sequence[str]], Tensor]


@dataclasses.dataclass
class SampleResult:
    """One generated sample: which config and prompt, a digest of the image bytes and its metrics."""

    config: int  # 0 = dense, i = configs[i - 1]
    index: int  # global sample index
    seed: int
    digest: str
    features: Tensor | None = None
    score: float | None = None
    clip: float | None = None


def _digest(image: Tensor) -> str:
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()[:16]


def _state(cpu: bool) -> Any:
    from accelerate import PartialState

    return PartialState(cpu=cpu)


@torch.no_grad()
def evaluate(
    pipe: Any,
    configs: Sequence[RunConfig],
    prompts: Sequence[str],
    call_kwargs: dict[str, Any],
    *,
    seed: int = 0,
    backend: str = "auto",
    feature_extractor: nn.Module | None = None,
    scorer: Scorer | None = None,
    clip: TextImageMetric | None = None,
    state: Any = None,
) -> dict[str, Any]:
    """Render every prompt dense and with each config; FID vs dense, scorer accuracy, CLIP score.

    Returns ``{"configs": [per-config summary], "samples": [per-sample rows]}``, identical on every
    process. Bad input (no prompts, FID with < 2 prompts, a bad config) raises before any generation
    and leaves ``pipe`` unpatched.
    """
    if not prompts:
        raise ValueError("no prompts to evaluate (the prompt list is empty)")
    if feature_extractor is not None and len(prompts) < 2:
        raise ValueError(f"FID needs >= 2 images per config, got {len(prompts)} prompt(s); use --num-images >= 2")
    validate_configs(pipe, configs, backend)
    state = _state(cpu=not torch.cuda.is_available()) if state is None else state
    from accelerate.utils import gather_object

    mine_results: list[SampleResult] = []
    with state.split_between_processes(list(range(len(prompts)))) as mine:
        for c, config in enumerate([None, *configs]):
            with patched(pipe, config, backend):
                for i in mine:
                    image = render(pipe, call_kwargs, prompts[i], seed + i)
                    r = SampleResult(c, i, seed + i, _digest(image))
                    batch = as_batch(image)
                    if feature_extractor is not None:
                        r.features = extract_features(feature_extractor, batch)
                    if scorer is not None:
                        r.score = float(torch.as_tensor(scorer(batch, [prompts[i]] * len(batch))).float().mean())
                    if clip is not None:
                        r.clip = float(torch.as_tensor(clip(batch, [prompts[i]] * len(batch))).float().mean())
                    mine_results.append(r)
    results = gather_object(mine_results) if state.num_processes > 1 else mine_results
    results = sorted(results, key=lambda r: (r.config, r.index))
    return summarize(results, configs, len(prompts), state.num_processes)


def summarize(results: list[SampleResult], configs: Sequence[RunConfig], n: int, processes: int) -> dict[str, Any]:
    """Per-config metrics from per-sample results sorted by (config, index)."""
    by_config = [[r for r in results if r.config == c] for c in range(len(configs) + 1)]
    for c, rows in enumerate(by_config):
        if [r.index for r in rows] != list(range(n)):
            raise RuntimeError(f"config {c}: gathered samples {[r.index for r in rows]} are not 0..{n - 1}")
    dense_feats = None
    if by_config[0][0].features is not None:
        dense_feats = torch.cat([r.features for r in by_config[0]])
    summaries = []
    for c, rows in enumerate(by_config):
        s: dict[str, Any] = {"config": "dense" if c == 0 else configs[c - 1].label, "num_images": n}
        if dense_feats is not None:
            s["fid_vs_dense"] = fid_from_features(dense_feats, torch.cat([r.features for r in rows]))
        if rows[0].score is not None:
            s["accuracy"] = sum(r.score for r in rows) / n
        if rows[0].clip is not None:
            s["clip_score"] = sum(r.clip for r in rows) / n
        summaries.append(s)
    samples = [
        {
            "config": r.config,
            "index": r.index,
            "seed": r.seed,
            "digest": r.digest,
            "features_digest": None if r.features is None else _digest(r.features),
            "score": r.score,
            "clip": r.clip,
        }
        for r in results
    ]
    return {"processes": processes, "configs": summaries, "samples": samples}
