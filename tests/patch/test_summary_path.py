"""``handle.summary()`` says which kernel path each module's sparse calls took (cpu: tiled with its query tile,
direct with its runs of keys, or one masked SDPA call on small grids), from the per-module `CallStats.paths`."""

from __future__ import annotations

import torch

import diffattn
from diffattn.kernels import cpu, get_backend
from diffattn.methods.gna import GNA, GNAConfig
from diffattn.tiny import tiny_output


def test_summary_shows_the_kernel_path_of_each_module(sd):
    pipe, _ = sd
    with diffattn.attention(pipe, "gna", window=3, backend="cpu") as handle:
        tiny_output(pipe, "tiny-sd")
        stats = handle.stats()
        table = handle.summary()
    header, rows = table.splitlines()[1].split(), [line.split() for line in table.splitlines()[2:]]
    assert header[-1] == "path", table
    ran = {name: s for name, s in stats.items() if s.sparse}
    assert ran, stats
    for name, s in ran.items():
        assert sum(s.paths.values()) == s.sparse, s.paths  # one path per sparse call
        (path,) = s.paths  # one grid per module, so one path
        assert path == "masked-sdpa" or path.startswith(("tiled(", "direct(")), path
        row = next(r for r in rows if r[0] == name)
        assert row[-1] == path, table
    # the path shown is the one the cost model picks for that module's calls (grid, heads, head dim, dtype)
    modules = {"unet." + n: m for n, m in pipe.unet.named_modules()}
    for name, s in ran.items():
        heads = modules[name].heads
        q = torch.empty(1, s.grid[0] * s.grid[1], heads, modules[name].to_q.out_features // heads,
                        dtype=next(pipe.unet.parameters()).dtype)
        plan = GNA(GNAConfig(window=3)).plan(s.grid, get_backend("cpu"), cpu.batch_item_bytes(q))
        assert next(iter(s.paths)) == cpu.prepare_call(plan, q).label, name


def test_summary_path_is_a_dash_before_any_call(sd):
    pipe, _ = sd
    with diffattn.attention(pipe, "gna", window=3, backend="cpu") as handle:
        rows = [line.split() for line in handle.summary().splitlines()[2:]]
    assert rows and all(r[-1] == "-" for r in rows)
