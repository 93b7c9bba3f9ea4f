"""Compile-time report of the Triton block-sparse kernel for sm80 and sm90, without a GPU (the driver of
``scripts/triton_report.py``).

For the FLUX-4K and HunyuanVideo-720p GNA presets it builds the plans, asks the kernel which autotune configs
it keeps for each launch (full tiles, partial tiles), compiles each with ``triton.compile`` for a `GPUTarget`
(triton's bundled ptxas makes the CUBIN) and reads per kept config: registers, local memory (spills) and the
stack from the CUBIN (``cuobjdump -res-usage``, bundled with triton), shared memory (triton's launch metadata,
against the GPU's limit) and the number of K/V buffers of the sparse-key loop (the ring depth of its async
copies in the TTGIR). That is the speed proxy on machines without a GPU; no timing is claimed.

Compiling for real GPUs needs ``TRITON_INTERPRET`` unset (the script refuses to start otherwise).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ...kernels import triton_bsa as tb
from ...methods.gna import GNAConfig, gna_plan

#: (name, grid, window, stride): the GNA paper's FLUX-4K and the STA/GNA HunyuanVideo-720p settings.
PRESETS = [
    ("flux-4k s1", (256, 256), (80, 80), (1, 1)),
    ("flux-4k s16x16", (256, 256), (80, 80), (16, 16)),
    ("hunyuan-720p s1", (30, 48, 80), (18, 24, 24), (1, 1, 1)),
    ("hunyuan-720p s16x8x8", (30, 48, 80), (18, 24, 24), (16, 8, 8)),
]
MIN_BUFFERS = {80: 2, 90: 3}
INDEX_NAMES = {0: "loaded", 1: "computed", 2: "block-major"}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
DTYPES = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


@dataclass(frozen=True)
class Row:
    preset: str
    arch: int
    launch: str  # "full" or "partial", "/" how key rows are found: loaded, computed, block-major
    tq: int
    block_m: int
    block_n: int
    warps: int
    stages: int
    registers: int
    local_bytes: int  # per-thread local memory: register spills (and stack arrays)
    stack_bytes: int
    shared_bytes: int
    shared_limit: int
    kv_buffers: int
    tma: bool

    def problems(self) -> list[str]:
        out = []
        if self.local_bytes or self.stack_bytes:
            out.append(f"spills ({self.local_bytes} B local, {self.stack_bytes} B stack)")
        if self.shared_bytes > self.shared_limit:
            out.append(f"shared {self.shared_bytes} B > limit {self.shared_limit} B")
        if self.kv_buffers < MIN_BUFFERS.get(self.arch, 2):
            out.append(f"{self.kv_buffers} K/V buffers < {MIN_BUFFERS.get(self.arch, 2)}")
        return out


def _signature(fn, dtype: str, dim: int, const: dict) -> tuple[dict, dict]:
    ptr = {"EMASK": "*i8", "LSE": "*fp32", "Q_INDEX": "*i32", "KV_INDEX": "*i32", "KV_BOX": "*i32",
           "TILE_AXES": "*i32", "M0": "*i8", "M1": "*i8", "M2": "*i8"}  # fmt: skip
    ptr.update({n: "*" + dtype for n in ("Q", "K", "V", "EK", "EV", "OUT")})
    sig = {n: "constexpr" if n in const else ptr.get(n, "fp32" if n == "qk_scale" else "i32") for n in fn.arg_names}
    # what a launch specializes: 16-byte aligned pointers, [B, S, H, D] strides divisible by 16 when D is
    strides = ["s" + t + a for t in ("q", "k", "v", "ek", "ev", "o") for a in "bsh"]
    aligned = [n for n in fn.arg_names if n in ptr or (dim % 16 == 0 and n in strides)]
    return sig, {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}


def kv_buffers(ttgir: str) -> int:
    """K/V ring depth of the sparse-key loop (the ``scf.for`` up to ``%R``): the leading dim of the
    multi-buffered ``BLOCK_N x D`` shared-memory tiles allocated for it (allocations are placed just
    before their loop; the text-key loop comes after). 1 when that loop is not pipelined."""
    loop = re.search(r"scf\.for [^\n]* to %R step", ttgir)
    if loop is None:
        raise ValueError("no sparse-key loop (scf.for ... to %R) in the TTGIR")
    prefix = ttgir[: loop.start()]
    prev = prefix.rfind("scf.for ")  # allocations of an earlier loop do not count
    allocs = re.findall(r"ttg\.local_alloc : \(\) -> !ttg\.memdesc<(\d+)x(\d+)x(\d+)x", prefix[max(prev, 0) :])
    return max((int(a[0]) for a in allocs), default=1)


def compile_one(arch: int, dtype: str, dim: int, mode: int, index_mode: int, cfg: triton.Config) -> dict:
    """Compile one kernel variant for ``sm<arch>`` (text keys with a padding mask, as the presets
    have) and read its resources: registers, local/stack bytes, shared bytes, K/V buffers, and
    whether its K/V loads are TMA (``cp.async.bulk.tensor``; block-major launches on sm90+)."""
    fn = tb._bsa_fwd_kernel.fn
    tma = index_mode == 2 and arch >= 90
    const = dict(HEAD_DIM=dim, BLOCK_D=max(16, triton.next_power_of_2(dim)), MASK_MODE=mode, INDEX_MODE=index_mode,
                 USE_TMA=tma, HAS_EXTRA=True, HAS_EXTRA_MASK=True, UPCAST=False, INPUT_PRECISION="ieee",
                 **cfg.kwargs)  # fmt: skip
    sig, attrs = _signature(fn, dtype, dim, const)
    k = triton.compile(ASTSource(fn, sig, constexprs=const, attrs=attrs), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})  # fmt: skip
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        res = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True)
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", res.stdout))
    return dict(registers=int(usage["REG"]), local_bytes=int(usage["LOCAL"]), stack_bytes=int(usage["STACK"]),
                shared_bytes=int(k.metadata.shared), kv_buffers=kv_buffers(k.asm["ttgir"]),
                tma="cp.async.bulk.tensor" in k.asm["ptx"])  # fmt: skip


def launches(grid, window, stride) -> list[tuple[str, int, int, int, int]]:
    """``(launch, tq, mask_mode, index_mode, kv_block)`` of the plan's launches (full tiles, partial tiles)."""
    plan = gna_plan(grid, *GNAConfig(window=window, stride=stride, dilation=(1,) * len(grid)).resolve(grid))
    kp = tb.KernelPlan.build(plan, torch.device("cpu"))
    index_mode = 2 if kp.kv_block else 1 if kp.kv_box.numel() else 0
    tq = kp.q_index.shape[1]
    out = [("full", tq, tb.MASK_NONE, index_mode, kp.kv_block)] if kp.num_full else []
    if kp.num_full < plan.num_tiles:
        out.append(("partial", tq, kp.mask_mode, index_mode, 0))
    return out


def report(archs: list[int], dtype: str, dim: int, quick: bool = False) -> list[Row]:
    """One row per (preset, launch, arch, kept config); ``quick``: only the first kept config (the
    one autotune tries first), for CI."""
    rows, cache = [], {}
    block_d = max(16, triton.next_power_of_2(dim))
    for name, grid, window, stride in PRESETS:
        for launch, tq, mode, index_mode, kv_block in launches(grid, window, stride):
            for arch in archs:
                cap = (arch // 10, arch % 10)
                limit = tb.SMEM_LIMIT.get(cap, tb.DEFAULT_SMEM_LIMIT)
                configs = tb.kept_configs(tb._CONFIGS, fp32=dtype == "fp32", block_d=block_d, partial=mode != 0, tq=tq,
                                          capability=cap, kv_block=kv_block)  # fmt: skip
                for c in configs[:1] if quick else configs:
                    key = (arch, mode, index_mode, c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                    if key not in cache:
                        cache[key] = compile_one(arch, dtype, dim, mode, index_mode, c)
                    rows.append(Row(name, arch, f"{launch}/{INDEX_NAMES[index_mode]}", tq, c.kwargs["BLOCK_M"],
                                    c.kwargs["BLOCK_N"], c.num_warps, c.num_stages, shared_limit=limit,
                                    **cache[key]))  # fmt: skip
    return rows


HEAD = ("preset", "sm", "launch/keys", "Tq", "BMxBN", "warps", "stages", "regs", "spill B", "smem KB", "limit KB",
        "K/V buf", "TMA", "ok")  # fmt: skip


def format_rows(rows: list[Row]) -> str:
    """A Markdown table, one line per row."""
    lines = [HEAD]
    for r in rows:
        bad = r.problems()
        lines.append((
            r.preset, str(r.arch), r.launch, str(r.tq), f"{r.block_m}x{r.block_n}", str(r.warps), str(r.stages),
            str(r.registers), str(r.local_bytes + r.stack_bytes), f"{r.shared_bytes / 1024:.0f}",
            f"{r.shared_limit / 1024:.0f}", str(r.kv_buffers), "yes" if r.tma else "no",
            "yes" if not bad else "; ".join(bad),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def run_and_print(
    archs: list[int], dtype: str, dim: int, json_path: Path | None = None, check: bool = False, quick: bool = False
) -> int:
    """`scripts/triton_report.py`: print the header line and the `format_rows` table of `report`, write the rows
    (with their problems) as JSON to ``json_path`` if given; exit status 1 when ``check`` and a kept config
    breaks the must-haves (`Row.problems`), else 0."""
    rows = report(archs, DTYPES[dtype], dim, quick)
    print(f"triton {triton.__version__}, {dtype}, head dim {dim}, kernel compiled (not run) per kept config")
    print(format_rows(rows))
    if json_path:
        json_path.write_text(json.dumps([asdict(r) | {"problems": r.problems()} for r in rows], indent=1))
    bad = [r for r in rows if r.problems()]
    return 1 if check and bad else 0
