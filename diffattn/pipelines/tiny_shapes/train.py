"""Train the embedded tiny shapes model (and its CNN scorer) on the CPU, reproducibly, and ship the weights
(``scripts/train_tiny.py`` parses the arguments and calls `run`; the shipped weights came from four warm-started
stages, whose exact commands are in docs/tiny_model.md).

Steps: (1) the scorer CNN on real rendered images (checked per class at 32/64/128 px); (2) rectified flow
(velocity prediction, logit-normal timesteps, 10% caption dropout to the empty prompt for classifier-free guidance,
EMA weights, bf16 autocast, a cosine learning rate over --max-steps, or over elapsed time so a wall-clock budget
ends cleanly);
every ``--eval-every`` steps the EMA model samples 8 images per class, the scorer grades them per class, and a
checkpoint is written (``last`` always, ``best`` when accuracy improves). Logs go to ``<out>/log.jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data as tiny_data
from . import pipeline as tm
from .scorer import SCORER_FILE, ShapeScorer, load_scorer, per_class_accuracy


def log(out: Path, **rec: object) -> None:
    rec["time"] = time.strftime("%H:%M:%S", time.gmtime())
    line = json.dumps(rec)
    print(line, flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(line + "\n")


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Noise and blur so the scorer tolerates imperfect samples (x in [0, 1])."""
    n = x.shape[0]
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (torch.rand(n, 1, 1, 1, generator=g) < 0.3).float()
    x = mix * blur + (1 - mix) * x
    std = 0.12 * torch.rand(n, 1, 1, 1, generator=g)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def train_scorer(out: Path, steps: int, seed: int) -> ShapeScorer:
    path = out / SCORER_FILE
    if path.is_file():
        log(out, event="scorer_reused", path=str(path))
        return load_scorer(path)
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = ShapeScorer()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        x, _, y = tiny_data.make_batch(128, seed=10_000_000 + step)
        lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(augment(x, g)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(out, event="scorer", step=step, loss=round(loss.item(), 4), elapsed=round(time.time() - t0, 1))
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    scenes = tiny_data.sample_scenes(1200, seed=20_000_000)
    for res in (32, 64, 128):
        acc = per_class_accuracy(tiny_data.render(scenes, res), scenes.label, model)
        log(out, event="scorer_real_accuracy", resolution=res, mean=round(sum(acc.values()) / len(acc), 4),
            per_class={k: round(v, 3) for k, v in acc.items()})
    return model


@torch.no_grad()
def evaluate(pipe: tm.TinyShapesPipeline, scorer: ShapeScorer, per_class: int, steps: int, cfg: float,
             seed: int = 123) -> dict[str, float]:
    labels = torch.arange(len(tiny_data.CLASSES)).repeat_interleave(per_class)
    scenes = tiny_data.sample_scenes(len(labels), seed=seed, labels=labels)
    caps = tiny_data.captions(scenes)
    g = torch.Generator().manual_seed(seed)
    imgs = pipe(caps, num_inference_steps=steps, guidance_scale=cfg, generator=g, output_type="pt").images
    return per_class_accuracy(imgs, labels, scorer)


def build_eval_pipe(model: dict, ema: dict[str, list[torch.Tensor]], comps: dict) -> tm.TinyShapesPipeline:
    parts = {}
    for name in ("transformer", "text_encoder"):
        m = copy.deepcopy(model[name])
        for p, e in zip(m.parameters(), ema[name]):
            p.data.copy_(e)
        parts[name] = m.eval()
    pipe = tm.TinyShapesPipeline(tokenizer=comps["tokenizer"], scheduler=comps["scheduler"], **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def class_probabilities(weights: list[tuple[str, float]]) -> torch.Tensor | None:
    """Sampling probability per class from ``--class-weight CLASS=W`` (others weigh 1); None = uniform."""
    if not weights:
        return None
    w = torch.ones(len(tiny_data.CLASSES))
    for name, value in weights:
        if name not in tiny_data.CLASSES or value <= 0:
            raise SystemExit(f"--class-weight {name}={value}: need a class of {list(tiny_data.CLASSES)} and W > 0")
        w[tiny_data.CLASSES.index(name)] = value
    return w / w.sum()


def batch_of(args: argparse.Namespace, step: int, class_p: torch.Tensor | None) -> tuple[torch.Tensor, list[str]]:
    """The training batch of ``step`` (seeded by step): images [B, 3, 32, 32] in [0, 1] and their captions."""
    seed = args.seed * 1_000_003 + step
    labels = None
    if class_p is not None:  # oversample classes the model draws poorly
        labels = torch.multinomial(class_p, args.batch, replacement=True, generator=torch.Generator().manual_seed(seed))
    images, caps, _ = tiny_data.make_batch(args.batch, seed, tm.RESOLUTION, labels=labels)
    return images, caps


def zero_init(transformer: torch.nn.Module) -> None:
    """DiT's adaLN-Zero: every block starts as the identity (zero gates) and the output layer at zero."""
    with torch.no_grad():
        transformer.adaln_single.linear.weight.zero_()
        transformer.adaln_single.linear.bias.zero_()
        for block in transformer.transformer_blocks:
            block.scale_shift_table[2].zero_()  # gate_msa
            block.scale_shift_table[5].zero_()  # gate_mlp
            block.attn2.to_out[0].weight.zero_()  # cross-attention has no gate: start it at zero too
            block.attn2.to_out[0].bias.zero_()
        transformer.proj_out.weight.zero_()
        transformer.proj_out.bias.zero_()


def train_diffusion(out: Path, scorer: ShapeScorer, args: argparse.Namespace) -> None:
    comps = tm.build_components(args.seed)
    if args.init_from is not None:  # warm start: same architecture, weights of an earlier checkpoint
        warm = tm.TinyShapesPipeline.from_pretrained(args.init_from, use_safetensors=True)
        comps["transformer"].load_state_dict(warm.transformer.float().state_dict())
        comps["text_encoder"].load_state_dict(warm.text_encoder.float().state_dict())
    elif args.zero_init:
        zero_init(comps["transformer"])
    model = {"transformer": comps["transformer"].train(), "text_encoder": comps["text_encoder"].train()}
    params = [p for m in model.values() for p in m.parameters()]
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, m in model.items()}
    log(out, event="model", params=n_params, batch=args.batch, lr=args.lr, minutes=args.minutes, bf16=args.bf16)
    ema = {k: [p.detach().clone().float() for p in m.parameters()] for k, m in model.items()}
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    tok = comps["tokenizer"]
    empty_ids = tok([""], padding="max_length", max_length=tm.TEXT_LEN, return_tensors="pt").input_ids
    g = torch.Generator().manual_seed(args.seed + 1)
    class_p = class_probabilities(args.class_weight)
    budget = args.minutes * 60
    t0 = time.time()
    best, step, losses, t_last = -1.0, 0, [], time.time()
    while True:
        elapsed = (time.time() - t0) / budget
        # with --max-steps the schedule follows steps (a rerun is the same run); else elapsed wall-clock time
        frac = step / args.max_steps if args.max_steps else elapsed
        if elapsed >= 1 or (args.max_steps and step >= args.max_steps):
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        x0, caps = batch_of(args, step, class_p)
        x0 = x0 * 2 - 1
        ids = tok(caps, padding="max_length", max_length=tm.TEXT_LEN, return_tensors="pt").input_ids
        drop = torch.rand(args.batch, generator=g) < args.caption_dropout
        ids[drop] = empty_ids
        # logit-normal(t_mean, 1), a fraction drawn uniformly: sampling starts at t = 1, where the layout is decided,
        # and logit-normal(0, 1) alone left t > 0.8 so rarely trained that samples came out as blocky noise
        t = torch.sigmoid(torch.randn(args.batch, generator=g) + args.t_mean)
        uniform = torch.rand(args.batch, generator=g) < args.t_uniform
        t = torch.where(uniform, torch.rand(args.batch, generator=g), t)
        noise = torch.randn(x0.shape, generator=g)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            cond = model["text_encoder"](ids).last_hidden_state
            v = model["transformer"](
                xt, encoder_hidden_states=cond, timestep=t * 1000,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False,
            )[0]
        loss = F.mse_loss(v.float(), noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, m in model.items():
                torch._foreach_lerp_(ema[k], [p.detach().float() for p in m.parameters()], 1 - decay)
        losses.append(loss.item())
        if step % args.log_every == 0:
            now = time.time()
            log(out, event="train", step=step, loss=round(sum(losses) / len(losses), 4), lr=round(lr, 6),
                s_per_step=round((now - t_last) / args.log_every, 3), elapsed_min=round((now - t0) / 60, 2))
            losses, t_last = [], now
        if step % args.eval_every == 0:
            best = checkpoint(out, model, ema, comps, scorer, args, step, best)
            t_last = time.time()
    best = checkpoint(out, model, ema, comps, scorer, args, step, best, final=True)
    log(out, event="done", steps=step, minutes=round((time.time() - t0) / 60, 2), best=best)


def checkpoint(out: Path, model: dict, ema: dict, comps: dict, scorer: ShapeScorer, args: argparse.Namespace,
               step: int, best: float, final: bool = False) -> float:
    pipe = build_eval_pipe(model, ema, comps)
    t = time.time()
    acc = evaluate(pipe, scorer, per_class=args.eval_per_class, steps=20, cfg=args.cfg)
    mean = sum(acc.values()) / len(acc)
    log(out, event="eval", step=step, mean=round(mean, 4), per_class={k: round(v, 3) for k, v in acc.items()},
        eval_s=round(time.time() - t, 1), final=final)
    pipe.save_pretrained(out / "last")
    if mean >= best:
        pipe.save_pretrained(out / "best")
        log(out, event="best", step=step, mean=round(mean, 4))
        best = mean
    return best


def ship(ckpt: Path, scorer_path: Path, dest: Path = tm.WEIGHTS_DIR) -> None:
    """Copy a checkpoint into the package in fp16 with its scorer and a sha256 manifest (`write_manifest` drops the
    configs' `_name_or_path`, this machine's absolute path, first)."""
    pipe = tm.TinyShapesPipeline.from_pretrained(ckpt, use_safetensors=True)
    pipe.transformer.to(torch.float16)
    pipe.text_encoder.to(torch.float16)
    if dest.exists():
        shutil.rmtree(dest)
    pipe.save_pretrained(dest)
    shutil.copy(scorer_path, dest / SCORER_FILE)
    tm.write_manifest(dest)
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    print(f"shipped {ckpt} -> {dest} ({size / 1e6:.2f} MB)")


def run(args: argparse.Namespace) -> None:
    """Train (scorer, then diffusion) and ship, or only ship, as ``scripts/train_tiny.py``'s arguments say."""
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.ship_only is not None:
        ship(args.ship_only, args.out / SCORER_FILE)
        return
    log(args.out, event="start", args={k: str(v) for k, v in vars(args).items()})
    scorer = train_scorer(args.out, args.scorer_steps, args.seed)
    train_diffusion(args.out, scorer, args)
    if args.ship:
        ship(args.out / "best", args.out / SCORER_FILE)
