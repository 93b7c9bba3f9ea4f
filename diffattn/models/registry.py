"""Which adapter serves a denoiser: every adapter, the refused classes and why, matched along the MRO."""

from __future__ import annotations

from torch import nn

from .base import FamilyAdapter
from .custom import (
    BriaFibo2Adapter,
    FramepackAdapter,
    HeliosAdapter,
    Ideogram4Adapter,
    Kandinsky3UNetAdapter,
    Kandinsky5Adapter,
    Krea2Adapter,
    OmniGenAdapter,
    StableCascadeAdapter,
    UniDiffuserAdapter,
    UVit2DAdapter,
    ZImageAdapter,
)
from .generic import IdsGridAdapter, LatentGridAdapter, ShapesAdapter, SizeArgsAdapter, UNetGridAdapter

#: preset families (``FamilyAdapter.family`` / `family_key`), in the order tables list them; any other
#: supported denoiser is family "dit" (no presets)
FAMILIES: tuple[str, ...] = ("sd", "sdxl", "pixart", "sd3", "flux", "wan", "cogvideox", "hunyuanvideo", "ltx")


class _SDUNet(UNetGridAdapter):
    def family_key(self, denoiser: nn.Module) -> str:
        """``sdxl`` when the UNet takes SDXL's extra text/time embeddings, else ``sd`` (1.5 / 2.1)."""
        return "sdxl" if getattr(denoiser.config, "addition_embed_type", None) == "text_time" else "sd"


ADAPTERS: tuple[FamilyAdapter, ...] = (
    # UNets: per-block levels; temporal attention of video UNets is 1-D over frames
    _SDUNet(("UNet2DConditionModel",)),
    UNetGridAdapter(("UNet2DModel",)),
    UNetGridAdapter(("UNet3DConditionModel", "I2VGenXLUNet"), axes="cfhw"),
    UNetGridAdapter(("UNetMotionModel",), axes="cfhw"),
    UNetGridAdapter(("UNetSpatioTemporalConditionModel",), axes="fchw"),
    # image DiTs, grid from the latent [B, C, H, W] and the patch size
    LatentGridAdapter(("PixArtTransformer2DModel",), family="pixart"),
    LatentGridAdapter(("DiTTransformer2DModel", "Transformer2DModel", "DreamLiteTransformer2DModel")),
    LatentGridAdapter(("SD3Transformer2DModel",), family="sd3", text_position="suffix", attn2_is_cross=False),
    # packed-token image DiTs, grid from position ids
    IdsGridAdapter(("FluxTransformer2DModel",), family="flux", text_position="prefix", timestep_scale=1000.0),
    # video DiTs
    LatentGridAdapter(("WanTransformer3DModel",), family="wan", ndim=3, axes="cfhw"),
    LatentGridAdapter(
        ("CogVideoXTransformer3DModel",), family="cogvideox", ndim=3, axes="fchw", text_position="prefix"
    ),
    LatentGridAdapter(
        ("HunyuanVideoTransformer3DModel",),
        family="hunyuanvideo",
        ndim=3,
        axes="cfhw",
        text_position="suffix",
        skip=("token_refiner",),  # text-only attention
    ),
    SizeArgsAdapter(("LTXVideoTransformer3DModel",), family="ltx", ndim=3),
    # --- every other denoiser diffusers 0.42 exports with a token grid ---
    UNetGridAdapter(("UNetControlNetXSModel", "AudioLDM2UNet2DConditionModel")),
    Kandinsky3UNetAdapter(("Kandinsky3UNet",)),
    UVit2DAdapter(("UVit2DModel",)),
    StableCascadeAdapter(("StableCascadeUNet",)),
    UniDiffuserAdapter(("UniDiffuserModel",)),
    BriaFibo2Adapter(("BriaFibo2Transformer2DModel",)),
    ZImageAdapter(("ZImageTransformer2DModel",)),
    OmniGenAdapter(("OmniGenTransformer2DModel",)),
    Krea2Adapter(("Krea2Transformer2DModel",)),
    Ideogram4Adapter(("Ideogram4Transformer2DModel",)),
    HeliosAdapter(("HeliosTransformer3DModel",), ndim=3, axes="cfhw"),
    FramepackAdapter(
        ("HunyuanVideoFramepackTransformer3DModel",),
        ndim=3,
        axes="cfhw",
        text_position="suffix",
        skip=("token_refiner",),
    ),
    Kandinsky5Adapter(("Kandinsky5Transformer3DModel",), ndim=3, axes="fhwc", skip=("text_transformer_blocks",)),
    # the audio branch's self-attention is over the audio sequence, not the video grid: left dense
    LatentGridAdapter(
        ("Kandinsky6Transformer3DModel",), ndim=3, axes="fhwc", skip=("text_transformer_blocks", "audio_dec_block")
    ),
    LatentGridAdapter(
        (
            "AuraFlowTransformer2DModel",
            "CogView3PlusTransformer2DModel",
            "CogView4Transformer2DModel",
            "GlmImageTransformer2DModel",
            "HunyuanDiT2DModel",
            "LuminaNextDiT2DModel",
            "PRXTransformer2DModel",
            "HiDreamImageTransformer2DModel",
        ),
        text_position="prefix",
    ),
    LatentGridAdapter(
        (
            "AllegroTransformer3DModel",
            "ChronoEditTransformer3DModel",
            "CosmosTransformer3DModel",
            "EasyAnimateTransformer3DModel",
            "MochiTransformer3DModel",
            "MotifVideoTransformer3DModel",
            "SkyReelsV2Transformer3DModel",
            "WanVACETransformer3DModel",
            "WanAnimateTransformer3DModel",
            "JoyImageEditTransformer3DModel",
        ),
        ndim=3,
        axes="cfhw",
        text_position="prefix",
    ),
    LatentGridAdapter(
        ("ConsisIDTransformer3DModel", "AnyFlowTransformer3DModel"), ndim=3, axes="fchw", text_position="prefix"
    ),
    LatentGridAdapter(
        ("LatteTransformer3DModel",), axes="cfhw", per_frame=True, temporal_marks=("temporal_transformer_blocks",)
    ),
    LatentGridAdapter(
        ("HunyuanVideo15Transformer3DModel",), ndim=3, axes="cfhw", text_position="suffix", skip=("token_refiner",)
    ),
    LatentGridAdapter(("HunyuanImageTransformer2DModel",), text_position="suffix", skip=("token_refiner",)),
    LatentGridAdapter(("ErnieImageTransformer2DModel",), text_arg="text_bth", text_position="suffix"),
    LatentGridAdapter(("Lumina2Transformer2DModel",), text_position="prefix", skip=("context_refiner",)),
    IdsGridAdapter(
        (
            "BriaTransformer2DModel",
            "BriaFiboTransformer2DModel",
            "ChromaTransformer2DModel",
            "LongCatImageTransformer2DModel",
            "OvisImageTransformer2DModel",
            "Flux2Transformer2DModel",
        ),
        text_position="prefix",
    ),
    IdsGridAdapter(
        ("Flux3Transformer2DModel",),
        text_position="prefix",
        extra_ids_args=("image_cond_ids",),
        skip=("txt_mode_blocks", "mode_blocks.image_cond"),  # text-only / reference-only self-attention
        grid_only_marks=("mode_blocks.image.",),
    ),
    ShapesAdapter(("QwenImageTransformer2DModel", "NucleusMoEImageTransformer2DModel"), text_position="prefix"),
    # patches [B, N, C, pt, ph, pw]: the target first, then references, padded to the batch's longest sample
    ShapesAdapter(
        ("JoyImageEditPlusTransformer3DModel",),
        shapes_arg="shape_list",
        stream_arg="hidden_states",
        text_position="suffix",
    ),
    SizeArgsAdapter(("LTX2VideoTransformer3DModel",), ndim=3, skip=("audio",)),
    LatentGridAdapter(("StableAudio3DiTModel",), ndim=1, axes="cl", stream_prefix="num_memory_tokens"),
    LatentGridAdapter(("StableAudioDiTModel",), ndim=1, axes="cl", stream_prefix=1),
    LatentGridAdapter(("MiniMaxMusic3Transformer1DModel",), ndim=1, axes="cl", stream_prefix=1),
    LatentGridAdapter(
        ("AceStepTransformer1DModel", "LongCatAudioDiTTransformer"),
        ndim=1,
        axes="lc",
        text_position="prefix",
    ),
)


#: diffusers classes that cannot be mapped, and what they lack (matched along the MRO like adapters)
REFUSED: dict[str, str] = {
    "PriorTransformer": "it denoises CLIP image embeddings: no spatial, temporal or sequence token grid",
    "T5FilmDecoder": "it denoises spectrogram frames with attention over note tokens: no latent token grid",
    "TransformerTemporalModel": "it is the temporal building block of UNet3D/I2VGen-XL, not a denoiser; "
    "patch the UNet that holds it",
    "MotionAdapter": "it only holds motion-module weights for UNetMotionModel; patch that model",
    "MiniMaxMusic3RVQDepthDecoder": "it is an autoregressive codebook decoder, not a diffusion denoiser",
    "UNet1DModel": "it has no attention modules",
    "RFD4ProteinaTransformer": "it denoises protein backbone coordinates: its attention over residues adds a learned "
    "per-pair bias from the pair representation, and residues adjacent in sequence are not adjacent in space, so there "
    "is no token grid to take neighbourhoods on",
    "SanaTransformer2DModel": "its self-attention is linear (ReLU kernel), with no softmax attention to sparsify",
    "SanaVideoTransformer3DModel": "its self-attention is linear (ReLU kernel), with no softmax attention to sparsify",
}


def supported_models() -> list[str]:
    """Denoiser class names diffattn can patch (and their subclasses)."""
    return sorted(n for a in ADAPTERS for n in a.class_names)


def family_key(denoiser: nn.Module) -> str:
    """Preset family of a denoiser: sd, sdxl, pixart, sd3, flux, wan, cogvideox, hunyuanvideo, ltx (or dit)."""
    return find_adapter(denoiser).family_key(denoiser)


def find_adapter(denoiser: nn.Module) -> FamilyAdapter:
    """The adapter of the most specific supported class in ``type(denoiser).__mro__``; a TypeError
    naming the class and the supported ones otherwise."""
    best: tuple[int, FamilyAdapter] | None = None
    for adapter in ADAPTERS:
        depth = adapter.match_depth(denoiser)
        if depth is not None and (best is None or depth < best[0]):
            best = (depth, adapter)
    for depth, cls in enumerate(type(denoiser).__mro__):
        if cls.__name__ in REFUSED and (best is None or depth < best[0]):
            raise TypeError(f"diffattn cannot patch {type(denoiser).__name__}: {REFUSED[cls.__name__]}")
    if best is None:
        raise TypeError(
            f"unsupported denoiser {type(denoiser).__name__}: neither it nor a base class is a denoiser diffattn "
            f"can read a token grid from; supported: {', '.join(supported_models())}"
        )
    return best[1]
