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


def _check_vocabulary(captions: Any) -> None:
    """ValueError (from `tiny_data.parse_caption`) on the first non-empty caption with a word outside the
    training vocabulary; the empty caption is the unconditional one."""
    for caption in captions:
        if caption:
            tiny_data.parse_caption(caption)


class TinyShapesPipeline(DiffusionPipeline):
    """Text-to-image pipeline of the embedded tiny model (components: transformer, text_encoder, tokenizer,
    scheduler). ``pipe(prompt, height, width)`` returns ``ImagePipelineOutput``; sizes must be positive multiples
    of the patch size (4); the training size is 32x32.

    It follows diffusers' text-to-image conventions, so code written for diffusers pipelines drives it too:
    ``check_inputs`` first, ``encode_prompt`` returning ``(prompt_embeds, negative_prompt_embeds)``,
    ``num_images_per_prompt``, a generator or one generator per image, ``latents=`` (the starting noise),
    ``prompt_embeds=``, ``output_type`` "pil" / "np" / "pt" / "latent", ``return_dict``,
    ``callback_on_step_end`` with ``callback_on_step_end_tensor_inputs``, ``interrupt`` and a progress bar that
    ``set_progress_bar_config`` controls. The model is pixel space: its "latents" are the image itself,
    ``[B, 3, H, W]`` in [-1, 1] (unclamped for ``output_type="latent"``); there is no VAE.
    """

    model_cpu_offload_seq = "text_encoder->transformer"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    _output_types = ("pil", "np", "pt", "latent")

    def __init__(self, transformer: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )

    def _embed(self, prompts: list[str], device: torch.device) -> torch.Tensor:
        ids = self.tokenizer(
            [p.lower() for p in prompts], padding="max_length", max_length=TEXT_LEN, truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        return self.text_encoder(ids).last_hidden_state

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)``, each ``[B * num_images_per_prompt, TEXT_LEN, D]``; the
        negative one is None without guidance. The negative prompt defaults to the empty caption (the
        model's training-time condition dropout). Words outside the training vocabulary raise ValueError."""
        device = device or self._execution_device
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            _check_vocabulary(prompts)
            prompt_embeds = self._embed(prompts, device)
        b = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = [negative_prompt or ""] * b if not isinstance(negative_prompt, list) else negative_prompt
            if len(negative) != b:
                raise ValueError(f"negative_prompt has {len(negative)} entries for {b} prompts; give one per prompt")
            _check_vocabulary(negative)
            negative_prompt_embeds = self._embed(negative, device)
        if not do_classifier_free_guidance:
            negative_prompt_embeds = None
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sizes are positive multiples of the patch size."""
        p = self.transformer.config.patch_size
        for name, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % p:
                raise ValueError(f"{name} must be a positive multiple of the patch size {p} (e.g. 32, 64), got {v!r}")

    def check_inputs(
        self,
        prompt: Any,
        height: int,
        width: int,
        negative_prompt: Any = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: Any = None,
        num_inference_steps: int = 1,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
    ) -> None:
        """Every argument checked before any work (a ValueError naming the bad value and what is accepted)."""
        self.check_size(height, width)
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("give exactly one of prompt and prompt_embeds")
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list | tuple) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError(f"prompt must be a caption or a non-empty list of captions, got {prompt!r}")
            _check_vocabulary(prompts)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("give at most one of negative_prompt and negative_prompt_embeds")
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and (embeds.ndim != 3 or embeds.shape[1] != TEXT_LEN):
                raise ValueError(f"{name} must be [B, {TEXT_LEN}, D], got shape {tuple(embeds.shape)}")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                                 f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
        inputs = list(callback_on_step_end_tensor_inputs or [])
        unknown = [k for k in inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs has to be in {self._callback_tensor_inputs}, "
                             f"but found {unknown}")
        for name, value in (("num_inference_steps", num_inference_steps),
                            ("num_images_per_prompt", num_images_per_prompt)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if output_type not in self._output_types:
            raise ValueError(f"output_type must be one of {list(self._output_types)}, got {output_type!r}")

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted velocity ``noise - x0`` for images ``x`` [B, 3, H, W] at timesteps ``t`` [B] in [0, 1000]."""
        return self.transformer(
            x, encoder_hidden_states=cond, timestep=t, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def prepare_latents(self, batch: int, height: int, width: int, generator: Any,
                        latents: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The starting noise ``[batch, 3, H, W]`` (fp32): ``latents`` itself when given (the same tensor object
        when it already has the device and dtype), else drawn from ``generator`` (one per image, or one)."""
        shape = (batch, 3, height, width)
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"got a list of {len(generator)} generators for {batch} images "
                             "(prompts x num_images_per_prompt); give one generator or one per image")
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents must have shape {shape} (images, channels, height, width), "
                                 f"got {tuple(latents.shape)}")
            return latents.to(device=device, dtype=torch.float32)
        from diffusers.utils.torch_utils import randn_tensor

        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Any = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> Any:
        """Generate images. ``output_type``: "pil" (list of PIL images), "np" (``[B, H, W, 3]`` in [0, 1]),
        "pt" (``[B, 3, H, W]`` in [0, 1]) or "latent" (``[B, 3, H, W]`` in the model's [-1, 1] pixel space,
        unclamped: what ``latents=`` takes back). ``callback_on_step_end(pipe, i, t, kwargs)`` is called after
        each step with the tensors named in ``callback_on_step_end_tensor_inputs`` (default ``["latents"]``)
        and may return replacements for them."""
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
        from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        height = RESOLUTION if height is None else height
        width = RESOLUTION if width is None else width
        self.check_inputs(prompt, height, width, negative_prompt, prompt_embeds, negative_prompt_embeds,
                          callback_on_step_end_tensor_inputs, num_inference_steps, num_images_per_prompt, output_type)
        self._guidance_scale = guidance_scale
        self._interrupt = False
        device = self._execution_device
        cfg = self.do_classifier_free_guidance
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, cfg, negative_prompt, num_images_per_prompt, device, prompt_embeds, negative_prompt_embeds
        )
        batch = prompt_embeds.shape[0]
        dtype = self.transformer.dtype
        latents = self.prepare_latents(batch, height, width, generator, latents, device)
        # after the latents: a wrapper of set_timesteps may write the starting point into them (two-stage refine)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                cond = torch.cat([negative_prompt_embeds, prompt_embeds]) if cfg else prompt_embeds
                xin = torch.cat([latents, latents]) if cfg else latents
                v = self.velocity(xin.to(dtype), t.expand(xin.shape[0]).to(dtype), cond.to(dtype)).float()
                if cfg:
                    vu, vc = v.chunk(2)
                    v = vu + guidance_scale * (vc - vu)
                latents = self.scheduler.step(v, t, latents, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds,
                             "negative_prompt_embeds": negative_prompt_embeds}
                    chosen = {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    outputs = callback_on_step_end(self, i, t, chosen)
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                progress_bar.update()
        if output_type == "latent":
            out: Any = latents
        else:
            images = (latents / 2 + 0.5).clamp(0, 1)
            if output_type == "pt":
                out = images
            else:
                arr = images.permute(0, 2, 3, 1).cpu().float().numpy()
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
