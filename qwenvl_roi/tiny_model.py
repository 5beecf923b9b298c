"""`qwenvl-roi tiny-model`: a tiny random-weight Qwen2.5-VL / Qwen2-VL built offline in seconds.

Tests and the CPU demo need a real model folder (config, weights, tokenizer, processor with image and video
processors, chat template) that LLaMA-Factory loads exactly like a hub checkpoint, without any network.
The tokenizer is a small byte-level BPE trained locally with the Qwen pre-tokenizer, wrapped as the Qwen2
tokenizer class (the Qwen-VL processors check the class) and carrying the Qwen special tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from qwenvl_roi.atomic import atomic_dir

ARCHES = ("qwen2_5_vl", "qwen2_vl")

# Qwen special tokens, in the order the real vocabulary has them (ids differ: ours are small).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Same pre-tokenisation as Qwen2Tokenizer: digits split one by one, words keep their leading space.
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The Qwen2-VL chat template (as shipped with Qwen2-VL-*-Instruct), so processor.apply_chat_template works.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A small English corpus so ordinary prompt text tokenises into few pieces (the vocabulary stays small).
BASE_CORPUS: tuple[str, ...] = (
    "You are a helpful assistant.",
    "You are an industrial inspection assistant. Judge the image and every candidate region.",
    "Look at the whole image and the candidate regions listed below. For each region answer normal or the "
    "defect type. The image is normal or abnormal.",
    "<regions> R1: [12, 34, 56, 78] R2: [90, 12, 345, 678] </regions>",
    "image: normal\nR1: normal\nR2: crack\nR3: seepage\nR4: spalling\nR5: abnormal\nR6: normal",
    "The quick brown fox jumps over the lazy dog. What is in the picture? Describe this image.",
    "Answer with one line per region in the order given. Coordinates are x1, y1, x2, y2 in pixels.",
    "Hello, how are you? I am fine, thank you. Yes. No. OK.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 [ ] ( ) { } < > : ; , . ! ? - _ / \\ ' \" # * + = % & @ $",
)

# Size presets: "test" is the platform-facts tiny model; "demo" follows the demo learning notes.
_TEST = {"text_hidden": 64, "text_layers": 2, "text_heads": 4, "text_kv_heads": 2, "text_intermediate": 128}
_TEST_VISION = {"vision_hidden": 64, "vision_depth": 4, "vision_heads": 4, "vision_intermediate": 128}
_DEMO = {"text_hidden": 128, "text_layers": 4, "text_heads": 4, "text_kv_heads": 2, "text_intermediate": 256}
_DEMO_VISION = {"vision_hidden": 128, "vision_depth": 4, "vision_heads": 4, "vision_intermediate": 256}
SIZES: dict[str, dict[str, int]] = {"test": {**_TEST, **_TEST_VISION}, "demo": {**_DEMO, **_DEMO_VISION}}


def _pretokens(texts: list[str]) -> list[str]:
    """Distinct Qwen pre-tokens of the texts (what BPE must merge into whole tokens)."""
    import regex  # installed with transformers; supports \\p{L}

    pattern = regex.compile(PRETOKENIZE_REGEX)
    seen: dict[str, None] = {}
    for text in texts:
        for piece in pattern.findall(text):
            seen.setdefault(piece, None)
    return list(seen)


def _train_bpe(texts: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE whose vocabulary makes every pre-token of ``texts`` a single token.

    The vocabulary budget is 256 bytes + the specials + one merge per extra character of each distinct
    pre-token, which is enough for the trainer to merge every word of the corpus completely; training on
    a word list replayed in a fixed order keeps the result deterministic.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    pieces = _pretokens(texts)
    byte_len = sum(max(len(p.encode("utf-8")) - 1, 0) for p in pieces)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = BpeTrainer(
        vocab_size=len(alphabet) + len(SPECIAL_TOKENS) + byte_len,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _build_tokenizer(texts: list[str]) -> Any:
    """Qwen2Tokenizer over a locally trained vocabulary, special tokens registered as Qwen has them."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe(texts)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
    )
    extra = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS[1:]]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    tokenizer.chat_template = CHAT_TEMPLATE
    for token in SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) != vocab[token]:
            raise RuntimeError(f"special token {token} did not keep its trained id {vocab[token]}")
    return tokenizer


def _resolve_dims(size: str | dict[str, int]) -> dict[str, int]:
    """Preset name or explicit dims (missing keys from the "test" preset), checked for consistency."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)} or a dict of dims, got {size!r}")
        dims = dict(SIZES[size])
    else:
        unknown = set(size) - set(SIZES["test"])
        if unknown:
            raise ValueError(f"unknown size keys {sorted(unknown)}; allowed: {sorted(SIZES['test'])}")
        dims = {**SIZES["test"], **size}
    head_dim, rem = divmod(dims["text_hidden"], dims["text_heads"])
    if rem or head_dim % 2 or dims["text_heads"] % dims["text_kv_heads"]:
        raise ValueError(f"text_hidden/text_heads must be an even head_dim, heads % kv_heads == 0: {dims}")
    if dims["vision_hidden"] < 64:
        raise ValueError("vision_hidden must be >= 64 (bitsandbytes' CPU 4-bit packing fails below)")
    if dims["vision_hidden"] % dims["vision_heads"]:
        raise ValueError(f"vision_hidden must be divisible by vision_heads: {dims}")
    return dims


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (temporal, height, width) like Qwen's [16, 24, 24]."""
    half = head_dim // 2
    t = max(half // 4, 1)
    h = (half - t) // 2
    return [t, h, half - t - h]


def _model_config(arch: str, dims: dict[str, int], vocab_size: int, ids: dict[str, int]) -> Any:
    """The transformers config of the tiny model; token ids point into the local tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    head_dim = dims["text_hidden"] // dims["text_heads"]
    text = {
        "vocab_size": vocab_size,
        "hidden_size": dims["text_hidden"],
        "intermediate_size": dims["text_intermediate"],
        "num_hidden_layers": dims["text_layers"],
        "num_attention_heads": dims["text_heads"],
        "num_key_value_heads": dims["text_kv_heads"],
        "max_position_embeddings": 32768,
        "max_window_layers": dims["text_layers"],
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": _mrope_section(head_dim),
        },
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
    }
    depth = dims["vision_depth"]
    if arch == "qwen2_5_vl":
        vision = {
            "depth": depth,
            "hidden_size": dims["vision_hidden"],
            "intermediate_size": dims["vision_intermediate"],
            "num_heads": dims["vision_heads"],
            "out_hidden_size": dims["text_hidden"],
            "window_size": 112,
            # like the real model: every other block windowed, the last block of each half full attention
            "fullatt_block_indexes": sorted({depth // 2 - 1, depth - 1} - {-1}),
            "tokens_per_second": 2,
        }
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    vision = {
        "depth": depth,
        "embed_dim": dims["vision_hidden"],
        "hidden_size": dims["text_hidden"],
        "mlp_ratio": max(dims["vision_intermediate"] // dims["vision_hidden"], 1),
        "num_heads": dims["vision_heads"],
    }
    return Qwen2VLConfig(text_config=text, vision_config=vision, **common)


def _processor(arch: str, tokenizer: Any) -> Any:
    """Image + video processor + tokenizer + chat template, the class LLaMA-Factory's mm plugin expects."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    cls = Qwen2_5_VLProcessor if arch == "qwen2_5_vl" else Qwen2VLProcessor
    return cls(
        # The released Qwen2-VL / Qwen2.5-VL processors' pixel limits (the class default caps at 1003520),
        # the same the converters record as processor_min_pixels / processor_max_pixels.
        image_processor=Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    arch: str = "qwen2_5_vl",
    *,
    size: str | dict[str, int] = "test",
    seed: int = 0,
    vocab_texts: list[str] | None = None,
) -> Path:
    """Build and save a random-weight model folder; returns its path.

    ``vocab_texts``: extra texts whose words (and the same words after a space) become single tokens, so
    prompt and verdict words are one token each. Same arguments -> same weights and tokenizer.
    The folder is written to a temporary sibling and moved into place, so a half-built model never exists.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    dims = _resolve_dims(size)
    out = Path(out_dir).resolve()
    texts = list(BASE_CORPUS)
    for text in vocab_texts or []:
        words = re.findall(r"\S+", text)
        texts.append(text)
        texts.append(" ".join(words))  # the words after a space as well as at the start of a line
        texts.extend(words)
    tokenizer = _build_tokenizer(texts)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = _model_config(arch, dims, len(tokenizer), ids)
    torch.manual_seed(seed)
    cls = Qwen2_5_VLForConditionalGeneration if arch == "qwen2_5_vl" else Qwen2VLForConditionalGeneration
    model = cls(config).to(torch.float32).eval()
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        _processor(arch, tokenizer).save_pretrained(tmp)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags of `qwenvl-roi tiny-model`."""
    parser.add_argument("--arch", choices=ARCHES, default="qwen2_5_vl", help="model family")
    parser.add_argument("--out", required=True, help="output folder (replaced if it exists)")
    parser.add_argument("--size", choices=sorted(SIZES), default="test", help="size preset (default test)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    parser.add_argument(
        "--vocab-text",
        action="append",
        default=None,
        metavar="TEXT",
        help="text whose words become single tokens (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    """Build the model and print its folder."""
    path = build_tiny_model(args.out, args.arch, size=args.size, seed=args.seed, vocab_texts=args.vocab_text)
    print(path)
    return 0
