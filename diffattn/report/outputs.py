"""Files of a `compare` report: ``report.json``, ``report.md``, ``speedup_quality.png``, ``grid.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .significance import accuracy_text


def write_outputs(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write every file of ``report`` under ``out``; returns their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "images"} for r in report["configs"]]
    paths = {
        "json": out / "report.json",
        "markdown": out / "report.md",
        "plot": out / "speedup_quality.png",
        "grid": out / "grid.png",
    }
    paths["json"].write_text(json.dumps({"meta": report["meta"], "configs": rows}, indent=2) + "\n")
    paths["markdown"].write_text(markdown(report["meta"], rows))
    plot(rows, report["meta"]["psnr_cap_db"], paths["plot"])
    image_grid(report, paths["grid"])
    return paths


def _f(value: Any, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _speedup_cell(r: dict[str, Any]) -> str:
    """``"1.42 [1.30-1.50]"``: the protocol's speedup and its spread, rounded."""
    sp = r.get("speedup")
    if not sp:
        return f"{r['speedup_step_median']:.2f}"
    return f"{sp['speedup']:.2f} [{sp['speedup_min']:.2f}-{sp['speedup_max']:.2f}]"


def _words(r: dict[str, Any]) -> str:
    return "; ".join(r.get("labels") or [])


def _accuracy_cell(r: dict[str, Any]) -> str:
    if r.get("accuracy") is None:
        return "-"
    return accuracy_text(r["accuracy"], r.get("accuracy_wilson95"))


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """One table row per config (dense first); every speedup beside its bounds and the protocol's words."""
    from .timing import load_text

    head = (
        "| config | step med [min-max] (ms) | speedup [min-max] | in words | end-to-end bound | of bound "
        "| attention share (dense / this) | attention bound | FLOP bound | token / H100-tile / CPU-plan bound "
        "| peak mem (MiB) "
        "| sparse / fallback / dense calls | PSNR (dB) | SSIM | LPIPS | CLIP | accuracy [95%] | FID vs dense |"
    )
    rounds = meta.get("rounds")
    timing = (f"Timing: one untimed warm-up per config, then {rounds} rounds interleaved config by config; the speedup "
              "is the median [min-max] of the per-round ratios of per-step medians. "
              if rounds else "")
    lines = [
        f"# diffattn compare: {meta['pipeline']} on {meta['device']}",
        "",
        f"{len(meta['prompts'])} prompt(s), seeds {meta['seeds']}, backend {meta['backend']}, "
        f"{meta['threads']} threads, "
        f"torch {meta['torch']}. {timing}PSNR is capped at {meta['psnr_cap_db']:.0f} dB. Peak memory: "
        f"{rows[0]['peak_memory_kind']}. "
        f"{load_text(meta.get('load_average_before'), meta.get('load_average_after')).capitalize()}.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        b = r["bounds"]
        mem = None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 2**20
        # the tile bound of diffattn.sim's H100 FNA tiles, and that of the CPU plan that ran (its own tiles)
        token_tile = f"{_f(b.get('token_bound'))} / {_f(b.get('tile_bound'))} / {_f(b.get('plan_bound'))}"
        calls = f"{r.get('sparse_calls', '-')} / {r.get('fallback_calls', '-')} / {r.get('dense_calls', '-')}"
        steps = r.get("step_rounds_s")
        step = (f"{steps['median'] * 1e3:.1f} [{steps['min'] * 1e3:.1f}-{steps['max'] * 1e3:.1f}]" if steps
                else f"{r['step_median_s'] * 1e3:.1f}")
        lines.append(
            f"| {r['config']} | {step} | {_speedup_cell(r)} | {_words(r)} | {b['end_to_end_bound']:.2f} "
            f"| {r['fraction_of_bound']:.2f} "
            f"| {_f(b.get('dense_attention_share'))} / {r['attention_share']:.2f} | {_f(b.get('attention_bound'))} "
            f"| {_f(b.get('flop_bound'))} | {token_tile} | {_f(mem, '.1f')} | {calls} "
            f"| {_f(r['psnr_db'], '.1f')} | {_f(r['ssim'], '.3f')} | {_f(r['lpips'], '.3f')} "
            f"| {_f(r['clip_score'])} | {_accuracy_cell(r)} | {_f(r['fid_vs_dense'], '.4g')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], psnr_cap: float, path: Path) -> None:
    """Speedup (step median) vs PSNR against dense, one point per config, its end-to-end bound drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for i, r in enumerate(rows):
        x, y, bound = r["psnr_db"], r["speedup_step_median"], r["bounds"]["end_to_end_bound"]
        color = f"C{i % 10}"
        ax.plot([x, x], [y, bound], color=color, linestyle=":", linewidth=1)
        ax.scatter([x], [bound], marker="_", s=300, color=color, linewidths=2)
        words = f", {_words(r)}" if i else ""
        label = f"{r['config']}: {y:.2f}x (bound {bound:.2f}x{words})"
        ax.scatter([x], [y], marker="o", s=40, color=color, label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"PSNR vs dense (dB, capped at {psnr_cap:.0f})")
    ax.set_ylabel("speedup per step (dense / config)")
    ax.set_title("speed vs quality (dot: measured; bar: Amdahl bound)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def to_pil(image: Tensor, size: int) -> Any:
    """``[C, H, W]`` (or a video's first frame) in [0, 1] as a PIL image, upscaled (nearest) to >= ``size`` px."""
    from PIL import Image

    if image.ndim == 4:  # video: first frame
        image = image[0]
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array)
    scale = max(1, -(-size // max(pil.size)))  # nearest-neighbour upscale to at least `size` pixels
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def image_grid(report: dict[str, Any], path: Path, cell: int = 128) -> None:
    """Rows = prompts, columns = configs (dense first), a header with each config's label."""
    from PIL import Image, ImageDraw

    rows = report["configs"]
    tiles = [[to_pil(img, cell) for img in r["images"]] for r in rows]
    w = max(t.width for col in tiles for t in col)
    h = max(t.height for col in tiles for t in col)
    header, pad = 28, 4
    grid = Image.new("RGB", (len(rows) * (w + pad) + pad, header + len(tiles[0]) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for c, (r, col) in enumerate(zip(rows, tiles)):
        x = pad + c * (w + pad)
        label = r["config"] if len(r["config"]) <= w // 6 else r["config"][: w // 6 - 1] + "~"
        draw.text((x, 4), label, fill="black")
        if c:
            words = " (noise)" if any("noise" in w for w in r.get("labels") or []) else ""
            draw.text((x, 15), f"{r['speedup_step_median']:.2f}x{words}, {r['psnr_db']:.1f} dB", fill="black")
        for p, tile in enumerate(col):
            grid.paste(tile, (x, header + pad + p * (h + pad)))
    grid.save(path)
