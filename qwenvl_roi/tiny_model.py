"""`qwenvl-roi tiny-model`: a tiny random-weight model of any supported family, built offline in seconds.

Tests and the CPU demo need a real model folder (config, weights, tokenizer, processor with image and video
processors, chat template) that LLaMA-Factory loads exactly like a hub checkpoint, without any network.
The tokenizer is a small byte-level BPE trained locally with the Qwen pre-tokenizer, wrapped as the family's
tokenizer class (the Qwen-VL processors check the class) and carrying the Qwen special tokens.
Architectures (``--arch``, HF model_types) and their family-specific keys come from the family table
(qwenvl_roi/families.py ``TINY_ARCHES``): every model type of Qwen2.5-VL, Qwen2-VL, Qwen3-VL and Qwen3.5,
the MoE ones included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from qwenvl_roi.errors import OutputError
from qwenvl_roi.families import DEFAULT_TINY_ARCH, TINY_ARCHES, Family, TinyArch, tiny_arch
from qwenvl_roi.fileio import atomic_dir, current_umask
from qwenvl_roi.outputs import claim, mark

ARCHES = TINY_ARCHES

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

# The Qwen2-VL chat template (as shipped with Qwen2-VL-*-Instruct), so processor.apply_chat_template works;
# families without a default system prompt (Qwen3-VL, Qwen3.5) get it without the default system turn.
_CHAT_TEMPLATE_TURNS = (
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


def chat_template(default_system: str | None) -> str:
    """The Qwen-VL chat template with the family's default system prompt (None: no default system turn)."""
    head = "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    head += "{% for message in messages %}"
    if default_system is not None:
        head += (
            "{% if loop.first and message['role'] != 'system' %}"
            f"<|im_start|>system\n{default_system}<|im_end|>\n{{% endif %}}"
        )
    return head + _CHAT_TEMPLATE_TURNS


CHAT_TEMPLATE = chat_template("You are a helpful assistant.")

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


def _build_tokenizer(texts: list[str], fam: Family, arch: TinyArch) -> Any:
    """The family's tokenizer class over a locally trained vocabulary, special tokens as Qwen has them.

    The released Qwen3-VL / Qwen3.5 tokenizers also carry ``<think>`` / ``</think>`` as added (not special)
    tokens; the family's ``added_tokens`` are added the same way, after the trained vocabulary."""
    import transformers
    from tokenizers import AddedToken

    vocab, merges = _train_bpe(texts)
    tokenizer = getattr(transformers, arch.tokenizer_class)(
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
    if fam.added_tokens:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.added_tokens])
    tokenizer.chat_template = chat_template(fam.default_system)
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


def _layer_types(layers: int) -> list[str]:
    """Qwen3.5's hybrid layout: every 4th layer full attention, the rest GatedDeltaNet linear attention; the
    last layer is always full so that even a 2-layer tiny model has both kinds."""
    return [
        "full_attention" if (i + 1) % 4 == 0 or i == layers - 1 else "linear_attention" for i in range(layers)
    ]


def _vision_config(fam: Family, arch: TinyArch, dims: dict[str, int]) -> dict[str, Any]:
    """The vision config keys of the family's generation (transformers names them differently)."""
    depth = dims["vision_depth"]
    if fam.vision_schema == "qwen2":
        return {
            "depth": depth,
            "embed_dim": dims["vision_hidden"],
            "hidden_size": dims["text_hidden"],
            "mlp_ratio": max(dims["vision_intermediate"] // dims["vision_hidden"], 1),
            "num_heads": dims["vision_heads"],
            **arch.vision,
        }
    vision: dict[str, Any] = {
        "depth": depth,
        "hidden_size": dims["vision_hidden"],
        "intermediate_size": dims["vision_intermediate"],
        "num_heads": dims["vision_heads"],
        "out_hidden_size": dims["text_hidden"],
        "patch_size": fam.patch_size,
        "spatial_merge_size": fam.merge_size,
    }
    if fam.vision_schema == "qwen2_5":
        vision.update(
            {
                "window_size": 112,
                # like the real model: every other block windowed, the last block of each half full attention
                "fullatt_block_indexes": sorted({depth // 2 - 1, depth - 1} - {-1}),
                "tokens_per_second": 2,
            }
        )
    if arch.deepstack:
        # like the real model's (8, 16, 24) of 27 blocks: spread over the depth, the last one near the top
        vision["deepstack_visual_indexes"] = sorted({max(depth * k // 3 - 1, 0) for k in (1, 2, 3)})
    vision.update(arch.vision)
    return vision


def _model_config(
    fam: Family, arch: TinyArch, dims: dict[str, int], vocab_size: int, ids: dict[str, int]
) -> Any:
    """The transformers config of the tiny model; token ids point into the local tokenizer."""
    import transformers

    head_dim = dims["text_hidden"] // dims["text_heads"]
    layers = max(dims["text_layers"], arch.min_text_layers)
    rope: dict[str, Any] = {
        "rope_type": "default",
        "rope_theta": 1000000.0,
        "mrope_section": _mrope_section(int(head_dim * arch.partial_rotary_factor)),
    }
    if arch.mrope_interleaved:
        rope["mrope_interleaved"] = True
    if arch.partial_rotary_factor != 1.0:
        rope["partial_rotary_factor"] = arch.partial_rotary_factor
    text: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": dims["text_hidden"],
        "intermediate_size": dims["text_intermediate"],
        "num_hidden_layers": layers,
        "num_attention_heads": dims["text_heads"],
        "num_key_value_heads": dims["text_kv_heads"],
        "max_position_embeddings": 32768,
        "rope_parameters": rope,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    if fam.vision_schema == "qwen3":
        text["head_dim"] = head_dim  # the classes default to the real models' 128 / 256
    else:
        text["max_window_layers"] = layers
    if arch.hybrid_attention:
        text["layer_types"] = _layer_types(layers)
    if "shared_expert_intermediate_size" in arch.text:
        del text["intermediate_size"]  # Qwen3.5-MoE: every layer is MoE, no dense MLP size
    text.update(arch.text)
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
    }
    config_class = getattr(transformers, arch.config_class)
    return config_class(text_config=text, vision_config=_vision_config(fam, arch, dims), **common)


def _processor(fam: Family, arch: TinyArch, tokenizer: Any) -> Any:
    """Image + video processor + tokenizer + chat template, the classes LLaMA-Factory's mm plugin expects.

    The image processor carries the released processors' pixel limits, patch and merge size (the installed
    class defaults are Qwen2-VL's: patch 14 and a 1003520-pixel cap), the same the converters record as
    processor_min_pixels / processor_max_pixels; Qwen3 families also use mean/std 0.5 as released."""
    import transformers
    from transformers import Qwen2VLImageProcessor

    image_kwargs: dict[str, Any] = {
        "min_pixels": fam.processor_min_pixels,
        "max_pixels": fam.processor_max_pixels,
        "patch_size": fam.patch_size,
        "merge_size": fam.merge_size,
    }
    if fam.vision_schema == "qwen3":
        image_kwargs.update({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    processor_class = getattr(transformers, arch.processor_class)
    video_class = getattr(transformers, arch.video_processor_class)
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**image_kwargs),
        tokenizer=tokenizer,
        video_processor=video_class(),
        chat_template=chat_template(fam.default_system),
    )


def build_tiny_model(
    out_dir: str | os.PathLike[str],
    arch: str = DEFAULT_TINY_ARCH,
    *,
    size: str | dict[str, int] = "test",
    seed: int = 0,
    vocab_texts: list[str] | None = None,
) -> Path:
    """Build and save a random-weight model folder; returns its path.

    ``vocab_texts``: extra texts whose words (and the same words after a space) become single tokens, so
    prompt and verdict words are one token each. Same arguments -> same weights and tokenizer.
    The folder is written to a temporary sibling and moved into place, so a half-built model never exists.
    ``out_dir`` must be new, empty or a tiny model built before (its marker file); otherwise OutputError.
    """
    fam, spec = tiny_arch(arch)
    dims = _resolve_dims(size)
    out = Path(out_dir).resolve()
    claim(out, "tiny-model")  # never a folder it did not make: a user's real model looks just like one
    import torch  # after the refusal: a folder refused is told at once, not after torch's import
    import transformers

    texts = list(BASE_CORPUS)
    for text in vocab_texts or []:
        words = re.findall(r"\S+", text)
        texts.append(text)
        texts.append(" ".join(words))  # the words after a space as well as at the start of a line
        texts.extend(words)
    tokenizer = _build_tokenizer(texts, fam, spec)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = _model_config(fam, spec, dims, len(tokenizer), ids)
    torch.manual_seed(seed)
    model = getattr(transformers, spec.model_class)(config).to(torch.float32).eval()
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        _processor(fam, spec, tokenizer).save_pretrained(tmp)
        mark(tmp, "tiny-model")
        for written in tmp.iterdir():  # safetensors writes 0600 whatever the umask; open() would not
            if written.is_file():
                written.chmod(0o666 & ~current_umask())
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI flags of `qwenvl-roi tiny-model`."""
    parser.add_argument(
        "--arch",
        choices=ARCHES,
        default=DEFAULT_TINY_ARCH,
        help=f"architecture (HF model_type; families in qwenvl_roi/families.py), default {DEFAULT_TINY_ARCH}",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output folder: new, empty or an earlier tiny model's (replaced); any other folder is refused",
    )
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
    """Build the model and print its folder; a folder that is not ours is refused (exit 2)."""
    try:
        path = build_tiny_model(
            args.out, args.arch, size=args.size, seed=args.seed, vocab_texts=args.vocab_text
        )
    except OutputError as exc:
        print(f"qwenvl-roi tiny-model: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a full disk or a read-only folder: one line; the folder is as it was
        print(
            f"qwenvl-roi tiny-model: error: writing {args.out} failed: {exc.strerror or exc}", file=sys.stderr
        )
        return 2
    print(path)
    return 0
