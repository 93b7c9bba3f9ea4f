"""Data-parallel generation with diffattn on every rank (2 spawned CPU processes, accelerate sharding),
and `gather_stats`."""

from __future__ import annotations

import pytest
import torch

from diffattn import apply_attention
from diffattn.distributed import gather_stats
from diffattn.testing.multiprocess import Spawned, data_parallel_job
from diffattn.tiny import build_tiny_pipeline, tiny_output

MODEL, METHOD, KNOBS, SEED = "tiny-pixart-alpha", "gna", {"window": (3, 3)}, 7
PROMPTS = ["a red fox", "a blue car", "a green tree"]  # odd: the shards differ in size


@pytest.mark.slow
def test_data_parallel_equals_one_process():
    """Each sample equals the single-process one with the same per-sample seed, no sample is
    rendered twice, and the gathered call counts are the single-process counts."""
    running = Spawned(data_parallel_job, (MODEL, METHOD, KNOBS, PROMPTS, SEED), world=2)
    try:
        pipe = build_tiny_pipeline(MODEL)
        pipe.set_progress_bar_config(disable=True)
        with apply_attention(pipe, METHOD, preset=False, **KNOBS) as handle:
            reference = [tiny_output(pipe, MODEL, prompt=p, seed=SEED + i) for i, p in enumerate(PROMPTS)]
            expected = dict(handle.stats())
    finally:
        got = running.result()  # waits for the ranks even if the reference failed
    assert got["shards"] == [[0, 1], [2]]  # contiguous, unpadded
    assert sorted(got["images"]) == [0, 1, 2]
    for i, ref in enumerate(reference):
        torch.testing.assert_close(got["images"][i], ref, atol=1e-5, rtol=0)
    assert not torch.allclose(reference[0], reference[1])  # per-sample seeds and prompts do differ
    assert got["stats"] == expected and sum(s.sparse for s in expected.values()) > 0
    assert 0 < got["local_sparse"] < sum(s.sparse for s in got["stats"].values())  # rank 0 saw only its share


def test_gather_stats_without_process_group_copies():
    pipe = build_tiny_pipeline(MODEL)
    pipe.set_progress_bar_config(disable=True)
    with apply_attention(pipe, METHOD, preset=False, **KNOBS) as handle:
        tiny_output(pipe, MODEL)
        total = gather_stats(handle)
        assert total == handle.stats() and handle.sparse_calls > 0
        assert all(total[n] is not s for n, s in handle.stats().items())  # a copy, not the live counters
