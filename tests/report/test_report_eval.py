"""`diffattn.report.evaluate`: FID math against the closed form, and data-parallel eval equal to one process."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from diffattn.report.evaluate import evaluate
from diffattn.report.quality import fid_from_features
from diffattn.report.runner import RunConfig

MODEL = "tiny-pixart-alpha"  # the cheapest tiny pipeline (8x8 image tokens)
PROMPTS = ["a red fox", "a blue house", "two cats"]  # 3 prompts on 2 processes: shards of 2 and 1
CONFIGS = ["gna window=4 stride=4", "msw"]


def _with_moments(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """``[n, F]`` samples whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    x = torch.randn(n, mean.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    white = torch.linalg.cholesky(x.T @ x / (n - 1))
    x = torch.linalg.solve_triangular(white, x.T, upper=False).T  # sample covariance = I
    return x @ torch.linalg.cholesky(cov).T + mean


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T


def _closed_form(mu1, s1, mu2, s2) -> float:
    """Frechet distance of N(mu1, s1) and N(mu2, s2): |mu1 - mu2|^2 + Tr(s1 + s2 - 2 (s1^1/2 s2 s1^1/2)^1/2)."""
    r = _sqrtm_psd(s1)
    return float(((mu1 - mu2) ** 2).sum() + torch.trace(s1 + s2 - 2 * _sqrtm_psd(r @ s2 @ r)))


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_fid_equals_closed_form_on_two_gaussians(dim):
    g = torch.Generator().manual_seed(dim)
    mu1, mu2 = torch.randn(dim, generator=g, dtype=torch.float64), torch.randn(dim, generator=g, dtype=torch.float64)
    a, b = (torch.randn(dim, dim, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = a @ a.T + 0.5 * torch.eye(dim, dtype=torch.float64), b @ b.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    real, fake = _with_moments(50, mu1, s1, 1), _with_moments(70, mu2, s2, 2)
    expected = _closed_form(mu1, s1, mu2, s2)
    assert expected > 0.1
    assert fid_from_features(real, fake) == pytest.approx(expected, rel=1e-6, abs=1e-8)
    # diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(d1) - sqrt(d2))^2
    d1, d2 = (torch.rand(dim, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    real, fake = _with_moments(40, mu1, torch.diag(d1), 3), _with_moments(40, mu2, torch.diag(d2), 4)
    diagonal = float(((mu1 - mu2) ** 2).sum() + ((d1.sqrt() - d2.sqrt()) ** 2).sum())
    assert fid_from_features(real, fake) == pytest.approx(diagonal, rel=1e-6)
    assert fid_from_features(real, real) == pytest.approx(0.0, abs=1e-8)


def test_fid_needs_two_samples():
    with pytest.raises(ValueError, match=">= 2 samples per side, got 1 and 3"):
        fid_from_features(torch.zeros(1, 4), torch.zeros(3, 4))


class TinyFeatures(nn.Module):
    """A fixed random conv + pooling: 2 features per image (stands in for pattern-FID / Inception;
    2 < 3 samples keeps the covariances full rank)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu().mean((2, 3))


def bright_scorer(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Stands in for the tiny model's scorer: 'correct' when the red channel outweighs the blue."""
    return images[:, 0].mean((1, 2)) > images[:, 2].mean((1, 2))


def run_eval(state=None) -> dict:
    from diffattn.tiny import build_tiny_pipeline, tiny_call_kwargs

    pipe = build_tiny_pipeline(MODEL)
    pipe.set_progress_bar_config(disable=True)
    kw = {k: v for k, v in tiny_call_kwargs(MODEL).items() if k not in ("prompt", "generator")}
    configs = [RunConfig.parse(c) for c in CONFIGS]
    extractor = TinyFeatures()
    return evaluate(pipe, configs, PROMPTS, kw, seed=7, feature_extractor=extractor, scorer=bright_scorer, state=state)


def _worker(rank: int, world: int, store: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    import torch.distributed as dist
    from accelerate import PartialState

    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world, timeout=timeout)
    try:
        result = run_eval(PartialState(cpu=True))
        torch.save(result, f"{out}.{rank}")
        # as `diffattn.testing.multiprocess` does: no rank tears its group down while the other may still be
        # talking to it (a rank once aborted in gloo's teardown, "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path):
    import torch.multiprocessing as mp

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker: bit-equal outputs need the same intra-op threads
    try:
        single = run_eval()
    finally:
        torch.set_num_threads(threads)
    assert single["processes"] == 1
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(2, str(tmp_path / "store"), out), nprocs=2, join=True, start_method="spawn")
    results = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]
    assert results[0] == results[1]  # every process gets the whole result
    assert results[0]["processes"] == 2
    # the same images, features (digests), seeds and scores per sample, bit for bit
    assert results[0]["samples"] == single["samples"]
    for two, one in zip(results[0]["configs"], single["configs"]):
        assert two["accuracy"] == one["accuracy"] and two["num_images"] == one["num_images"]
        # FID from bit-equal features: equal up to LAPACK's eigen solver rounding
        assert two["fid_vs_dense"] == pytest.approx(one["fid_vs_dense"], rel=1e-6, abs=1e-9)
    assert [s["num_images"] for s in single["configs"]] == [3, 3, 3]  # no padded duplicates
    assert [(s["config"], s["index"]) for s in single["samples"]] == [(c, i) for c in range(3) for i in range(3)]
    assert single["configs"][0]["fid_vs_dense"] == pytest.approx(0.0, abs=1e-9)
    digests = [[s["digest"] for s in single["samples"] if s["config"] == c] for c in range(3)]
    assert digests[1] != digests[0] and digests[2] != digests[0]  # the methods change the images


def test_bad_input_before_any_generation():
    calls = []

    class Pipe:
        def __call__(self, **kw):
            calls.append(kw)

    with pytest.raises(ValueError, match="prompt list is empty"):
        evaluate(Pipe(), [], [], {})
    with pytest.raises(ValueError, match="FID needs >= 2 images per config, got 1"):
        evaluate(Pipe(), [], ["one"], {}, feature_extractor=TinyFeatures())
    assert calls == []


@pytest.mark.slow
def test_eval_cli_writes_json(tmp_path: Path):
    import json

    from diffattn.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\ntwo cats\n")
    out = tmp_path / "eval"
    argv = ["eval", "--model", MODEL, "--prompts", str(prompts), "--config", "msw", "--no-fid", "--no-progress"]
    assert main([*argv, "--num-images", "3", "--seed", "5", "--out", str(out)]) == 0
    data = json.loads((out / "eval.json").read_text())
    assert data["processes"] == 1 and [c["config"] for c in data["configs"]] == ["dense", "msw"]
    assert [(s["config"], s["index"], s["seed"]) for s in data["samples"]] == [
        (c, i, 5 + i) for c in range(2) for i in range(3)
    ]
    assert [s["digest"] for s in data["samples"][:3]] != [s["digest"] for s in data["samples"][3:]]
