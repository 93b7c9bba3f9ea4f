"""The embedded tiny text-to-image model: a pixel-space PixArt transformer trained on the shapes of :mod:`.data`.

Why this design: pixel space needs no VAE (one less model to train on 2 CPU cores). 32x32 RGB with patch 4 gives
an 8x8 token grid: on one shared CPU core a 16x16 grid (patch 2) ran at ~2.4 s per batch of 32 even with a
0.9M-parameter model, too slow to learn global structure in the ~1.5 h budget (an earlier 2.1M DiT at 16x16 tokens
reached 50% class accuracy in 77 min); patch 4 trains 4x more samples per second. At 2x and 4x per side the grid
is 16x16 and 32x32 tokens, where a window of the training grid (8x8) is a real restriction.
PixArt has separate cross-attention to the caption, so every method (freeswim too) applies. Captions come
from a closed vocabulary, so the tokenizer is word level (one token per word, built in memory) and the text encoder
is a tiny CLIP trained jointly. Training is rectified flow with velocity prediction:
``x_t = (1 - t) x0 + t noise``, ``v = noise - x0``, timestep ``t * 1000``, sampled by
``FlowMatchEulerDiscreteScheduler(shift=1)``.

Images are ``[B, 3, H, W]`` in ``[-1, 1]`` inside the pipeline, ``[0, 1]`` for ``output_type="pt"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from . import data as tiny_data

RESOLUTION = 32  # training resolution in pixels (per side)
PATCH = 4  # pixels per token side -> an 8x8 token grid at the training resolution
TEXT_LEN = 12  # tokens per caption, padded; the longest caption has 9 with <bos>/<eos>
TRAIN_GRID = (RESOLUTION // PATCH, RESOLUTION // PATCH)
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights" / "tiny_shapes"  # package data
REBUILD_HINT = (
    "rebuild it with `python scripts/train_tiny.py` (the staged commands are in docs/tiny_model.md, about 2.5 h on "
    "2 CPU cores) or reinstall diffattn"
)
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")

# Architecture of the shipped model; train_tiny.py may override for experiments.
TRANSFORMER_CONFIG: dict[str, Any] = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    num_layers=6,
    cross_attention_dim=128,
    caption_channels=128,
    sample_size=RESOLUTION,
    patch_size=PATCH,
    norm_type="ada_norm_single",
    use_additional_conditions=False,
    interpolation_scale=1,
)
TEXT_CONFIG: dict[str, Any] = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, projection_dim=128
)


def build_tokenizer() -> Any:
    """Word-level tokenizer over :data:`tiny_data.VOCABULARY`, built in memory (no files)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL_TOKENS + tiny_data.VOCABULARY)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        model_max_length=TEXT_LEN,
    )


def build_components(seed: int = 0, **transformer_overrides: Any) -> dict[str, Any]:
    """Randomly initialised components (seeded) of :class:`TinyShapesPipeline`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = build_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(**{**TRANSFORMER_CONFIG, **transformer_overrides})
    text_cfg = CLIPTextConfig(
        vocab_size=len(tok),
        max_position_embeddings=TEXT_LEN,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **TEXT_CONFIG,
    )
    text_encoder = CLIPTextModel(text_cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return dict(transformer=transformer, text_encoder=text_encoder, tokenizer=tok, scheduler=scheduler)


class TinyShapesPipeline(DiffusionPipeline):
    """Text-to-image pipeline of the embedded tiny model (components: transformer, text_encoder, tokenizer,
    scheduler). ``pipe(prompt, height, width)`` returns ``ImagePipelineOutput``; sizes must be positive multiples
    of the patch size (4); the training size is 32x32."""

    model_cpu_offload_seq = "text_encoder->transformer"

    def __init__(self, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )

    def encode_prompt(self, prompts: list[str], *, check: bool = True) -> torch.Tensor:
        """Caption embeddings ``[B, TEXT_LEN, D]``; ``check`` rejects words outside the training vocabulary."""
        if check:
            for p in prompts:
                if p:
                    tiny_data.parse_caption(p)
        ids = self.tokenizer(
            [p.lower() for p in prompts], padding="max_length", max_length=TEXT_LEN, truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sizes are positive multiples of the patch size."""
        p = self.transformer.config.patch_size
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % p:
                raise ValueError(f"{name} must be a positive multiple of the patch size {p} (e.g. 32, 64), got {v!r}")

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ``noise - x0`` for images ``x`` [B, 3, H, W] at timesteps ``t`` [B] in [0, 1000]."""
        return self.transformer(
            x, encoder_hidden_states=cond, timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Any:
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
        from diffusers.utils.torch_utils import randn_tensor

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("prompt must be a caption or a non-empty list of captions")
        height = RESOLUTION if height is None else height
        width = RESOLUTION if width is None else width
        self.check_size(height, width)
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if output_type not in ("pil", "pt", "np"):
            raise ValueError(f"output_type must be 'pil', 'pt' or 'np', got {output_type!r}")
        cond = self.encode_prompt(prompts)
        b = len(prompts)
        cfg = guidance_scale != 1.0
        if cfg:
            cond = torch.cat([self.encode_prompt([""] * b, check=False), cond])
        dtype = self.transformer.dtype
        x = randn_tensor((b, 3, height, width), generator=generator, device=self.device, dtype=torch.float32)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            xin = torch.cat([x, x]) if cfg else x
            v = self.velocity(xin.to(dtype), t.expand(xin.shape[0]).to(dtype), cond.to(dtype)).float()
            if cfg:
                vu, vc = v.chunk(2)
                v = vu + guidance_scale * (vc - vu)
            x = self.scheduler.step(v, t, x, return_dict=False)[0]
        images = (x / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            out: Any = images
        else:
            arr = images.permute(0, 2, 3, 1).cpu().numpy()
            out = self.numpy_to_pil(arr) if output_type == "pil" else arr
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=out) if return_dict else (out,)


class WeightsCheckError(RuntimeError):
    """The model folder does not match its manifest (a corrupted, extra or unlisted file): one line naming it."""


MANIFEST = "manifest.json"


def _check_weights(path: Path) -> None:
    """Raise ``FileNotFoundError`` / `WeightsCheckError` (one line) naming the first missing, corrupted or unlisted
    file under ``path``: every file of the folder must be listed in the manifest with its sha256, so nothing the
    manifest does not vouch for (an added index file and shard, say) is ever loaded."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"tiny model weights not found: {manifest} is missing; {REBUILD_HINT}")
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not isinstance(entries, dict):
            raise ValueError(f"'files' is a {type(entries).__name__}, not an object")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise WeightsCheckError(f"tiny model manifest {manifest} is corrupted ({e}); {REBUILD_HINT}") from None
    import hashlib

    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink()}
    unlisted = sorted(present - set(entries) - {MANIFEST})
    if unlisted:
        raise WeightsCheckError(
            f"tiny model folder {path} holds {len(unlisted)} file(s) its manifest does not list ({', '.join(unlisted)}"
            f"): refused, nothing unverified is loaded; remove them, or {REBUILD_HINT}"
        )
    for rel, digest in entries.items():
        f = path / rel
        if not f.is_file():
            raise FileNotFoundError(f"tiny model file missing: {f}; {REBUILD_HINT}")
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise WeightsCheckError(f"tiny model file corrupted (sha256 mismatch): {f}; {REBUILD_HINT}")


#: config keys that record where the files were written (the training machine's absolute path): never shipped
MACHINE_KEYS = ("_name_or_path",)


def strip_machine_paths(path: Path) -> list[Path]:
    """Drop `MACHINE_KEYS` from every JSON config under ``path`` (diffusers and transformers write them sorted,
    2-space indented: kept so); returns the files changed."""
    changed = []
    for f in sorted(path.rglob("*.json")):
        if f.name == MANIFEST:
            continue
        data = json.loads(f.read_text(encoding="utf-8"))
        if isinstance(data, dict) and any(k in data for k in MACHINE_KEYS):
            for k in MACHINE_KEYS:
                data.pop(k, None)
            f.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            changed.append(f)
    return changed


def write_manifest(path: Path) -> None:
    """Strip machine paths from the configs (`strip_machine_paths`), then record the sha256 of every file under
    ``path`` in ``manifest.json`` (checked by :func:`tiny_model`, which refuses any file not listed)."""
    import hashlib

    strip_machine_paths(path)
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.relative_to(path).as_posix() != MANIFEST)
    digests = {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (path / MANIFEST).write_text(json.dumps({"files": digests}, indent=1) + "\n")


def tiny_model(path: str | Path | None = None, *, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> TinyShapesPipeline:
    """Load the trained tiny model shipped in the package (or from ``path``), checking every file against the
    manifest first (`_check_weights`); safetensors weights only."""
    path = Path(path) if path is not None else WEIGHTS_DIR
    _check_weights(path)
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    was = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:  # the load bars would be noise: four tiny components load in about a second
        pipe = TinyShapesPipeline.from_pretrained(path, dtype=dtype, use_safetensors=True)
    finally:
        if was[0]:
            dlog.enable_progress_bar()
        if was[1]:
            tlog.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.transformer, pipe.text_encoder):
        m.eval()
    return pipe.to(device)
