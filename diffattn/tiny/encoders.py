"""In-memory tokenizers and tiny text encoders for the random-weight test pipelines: no files, no network.

Tokenizers are built from vocabularies made here (byte-level CLIP BPE, Unigram T5, character-level Llama and
Gemma, byte-level Qwen BPE with merges from the pipelines' own templates); encoders are two-layer models with
random weights, sized by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

TEXT_LEN = 16  # text tokens (CLIP model_max_length / max_sequence_length)


def byte_alphabet() -> list[str]:
    """GPT-2 style printable stand-ins for the 256 byte values."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer(max_length: int = TEXT_LEN) -> Any:
    """Byte-level CLIP BPE tokenizer without merges (one token per character)."""
    from transformers import CLIPTokenizer

    alphabet = byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": i + len(alphabet) for i, c in enumerate(alphabet)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer() -> Any:
    """Unigram T5 tokenizer over lowercase letters, digits and a little punctuation."""
    from transformers import T5Tokenizer

    chars = "▁abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -2.0) for c in chars]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=TEXT_LEN)


def llama_tokenizer() -> Any:
    """Character-level Llama BPE tokenizer with byte fallback, BOS and right padding."""
    from transformers import LlamaTokenizerFast

    vocab: dict[str, int] = {}
    for tok in ["<unk>", "<s>", "</s>", "<pad>", "▁"]:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in map(chr, range(33, 127)):
        vocab[c] = len(vocab)
    # Right padding + BOS like the real HunyuanVideo (Llama-3) tokenizer: the transformer assumes the valid
    # text tokens come first when it builds its key-padding mask.
    return LlamaTokenizerFast(vocab=vocab, merges=[], pad_token="<pad>", padding_side="right", add_bos_token=True)


def clip_text(tok: Any, hidden: int, *, projection: int | None = None, positions: int = TEXT_LEN) -> Any:
    """Tiny CLIPTextModel (or CLIPTextModelWithProjection if ``projection`` is given)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=positions,
        projection_dim=projection or hidden,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if projection is not None else CLIPTextModel
    return cls(config)


def t5_text(tok: Any, d_model: int, *, umt5: bool = False) -> Any:
    """Tiny T5EncoderModel (or UMT5EncoderModel)."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=len(tok),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=d_model // 8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kwargs))
    return T5EncoderModel(T5Config(**kwargs))


def decoder_sizes(tok: Any, hidden: int, **overrides: Any) -> dict[str, Any]:
    """The sizes every tiny decoder-style text encoder shares (Llama, Gemma 3, Qwen 3): two layers, two heads."""
    sizes = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=64)
    return {**sizes, **overrides}


def llama_text(tok: Any, hidden: int) -> Any:
    """Tiny LlamaModel (two layers)."""
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        **decoder_sizes(tok, hidden),
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return LlamaModel(config)


def gemma_tokenizer(max_length: int = TEXT_LEN) -> Any:
    """Character-level Gemma BPE tokenizer with byte fallback, BOS, made in memory; left padding like
    the real one (the pipeline sets it anyway)."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for tok in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "▁"]:
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in map(chr, range(33, 127)):
        vocab[c] = len(vocab)
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=max_length, add_bos_token=True)


def gemma3_text(tok: Any, hidden: int) -> Any:
    """Tiny Gemma3ForConditionalGeneration: two text layers and a one-layer 8x8-pixel SigLIP tower
    (LTX-2 only reads the text hidden states, but the pipeline types the full model)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(
        **decoder_sizes(tok, hidden),
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4
    )
    return Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))


_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<think>",
    "</think>",
)


# The Qwen2/Qwen3 chat format, enough for HunyuanVideo 1.5 (system + user) and FLUX.2 Klein (user, thinking off).
_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def qwen_tokenizer(texts: Iterable[str] = ()) -> Any:
    """Byte-level Qwen2 BPE tokenizer with the Qwen special tokens and chat template, built in memory.

    Every pre-tokenized piece of ``texts`` (special tokens excluded) becomes one token through a chain of
    left-to-right merges; other text is encoded byte by byte. Pads with ``<|endoftext|>`` on the right.
    """
    from transformers import Qwen2Tokenizer

    alphabet = byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    pre = Qwen2Tokenizer(vocab=dict(vocab), merges=[]).backend_tokenizer.pre_tokenizer
    merges: list[tuple[str, str]] = []
    special = re.compile("|".join(map(re.escape, _SPECIAL)))
    for text in texts:
        for chunk in special.split(text):
            for piece, _ in pre.pre_tokenize_str(chunk):
                acc = piece[0]
                for ch in piece[1:]:
                    if acc + ch not in vocab:
                        merges.append((acc, ch))
                        vocab[acc + ch] = len(vocab)
                    acc += ch
    for tok in _SPECIAL:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(_SPECIAL[1:]))
    tok.chat_template = _CHAT_TEMPLATE
    return tok


def qwen25vl_text_config(tok: Any, hidden: int) -> dict[str, Any]:
    return {
        "vocab_size": len(tok),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        "rope_theta": 1000000.0,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
    }


def qwen25vl(tok: Any, hidden: int) -> Any:
    """Tiny Qwen2_5_VLForConditionalGeneration (2 text layers, 2-layer vision tower)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=qwen25vl_text_config(tok, hidden),
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        vocab_size=len(tok),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config)
