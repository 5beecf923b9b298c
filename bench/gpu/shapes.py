"""Random-weight model folders at real shapes (Qwen2.5-VL-7B / 3B, Qwen3-VL-8B) or tiny CPU shapes, offline.

Why: no model hub is reachable, but speed and memory do not depend on the weights' values; a model with the
published *-Instruct configuration and random weights costs the same as the real one. Only the tokenizer
differs: a small byte-level BPE (trained here on the benchmark's own prompts, with Qwen2's pre-tokenizer, so
digits are split one per token as in the real one) whose special-token ids are written into the config; the
embedding and output matrices keep the real vocabulary size. Each shape belongs to a model family
(qwenvl_roi/families.py), which gives its classes, processor and recipes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qwenvl_roi import fileio
from qwenvl_roi.families import Family, family
from qwenvl_roi.tiny_model import SPECIAL_TOKENS, chat_template

# Published values of Qwen/Qwen2.5-VL-7B-Instruct and Qwen/Qwen2.5-VL-3B-Instruct (config.json), without
# the token ids, which come from the local tokenizer.
_VISION_7B_3B: dict[str, Any] = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "temporal_patch_size": 2,
}

SHAPES: dict[str, dict[str, Any]] = {
    "7b": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_window_layers": 28,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {**_VISION_7B_3B, "out_hidden_size": 3584},
    },
    "3b": {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_window_layers": 70,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vision_config": {**_VISION_7B_3B, "out_hidden_size": 2048},
    },
    # CPU check of the whole path: same module structure, under a million parameters. Vision hidden 64 is
    # the smallest that bitsandbytes' CPU 4-bit packing accepts; depth 10 leaves room for the recipes'
    # top-8 vision LoRA blocks and top-2 unfrozen blocks.
    "quick": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_window_layers": 2,
        "vocab_size": None,  # the tokenizer's size
        "tie_word_embeddings": False,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "vision_config": {
            **_VISION_7B_3B,
            "depth": 10,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "fullatt_block_indexes": [4, 9],
            "out_hidden_size": 64,
        },
    },
}

# Published values of Qwen/Qwen3-VL-8B-Instruct (config.json), without the token ids: a Qwen3-8B language
# model (36 layers, GQA 32/8 heads of 128, interleaved m-rope) and a 27-block SigLIP-2 vision tower whose
# blocks 8, 16 and 24 feed the deepstack mergers into language layers 0-2.
_QWEN3_VL_8B: dict[str, Any] = {
    "text_config": {
        "hidden_size": 4096,
        "intermediate_size": 12288,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-06,
        "vocab_size": 151936,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 4096,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
    },
    "tie_word_embeddings": False,
}

# Qwen3-VL shapes (nested text_config / vision_config, as Qwen3VLConfig takes them).
QWEN3_VL_SHAPES: dict[str, dict[str, Any]] = {
    "qwen3_vl_8b": _QWEN3_VL_8B,
    # CPU check of the Qwen3-VL path: depth 10 as in "quick", deepstack mergers spread over it like 8/16/24
    # of 27, and 4 language layers so every deepstack merger reaches a text logit (merger i feeds layer i).
    "qwen3_vl_quick": {
        "text_config": {
            **_QWEN3_VL_8B["text_config"],
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "vocab_size": None,  # the tokenizer's size
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        },
        "vision_config": {
            **_QWEN3_VL_8B["vision_config"],
            "depth": 10,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": 64,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [2, 5, 8],
        },
        "tie_word_embeddings": False,
    },
}

# shape -> (model family, HF model_type): the classes, processor and recipes of the shape
SHAPE_FAMILY: dict[str, tuple[str, str]] = {
    **dict.fromkeys(SHAPES, ("qwen2_5_vl", "qwen2_5_vl")),
    **dict.fromkeys(QWEN3_VL_SHAPES, ("qwen3_vl", "qwen3_vl")),
}
ALL_SHAPES: tuple[str, ...] = tuple(SHAPE_FAMILY)


def shape_family(shape: str) -> Family:
    """The model family of a benchmark shape."""
    if shape not in SHAPE_FAMILY:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPE_FAMILY)}")
    return family(SHAPE_FAMILY[shape][0])


_COMMON: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "use_sliding_window": False,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}


# Qwen2-VL's chat template (images and text), enough for processor.apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write_json(path: Path, obj: Any) -> None:
    fileio.write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 4096) -> Any:
    """Train a byte-level BPE with Qwen2's pre-tokenizer on `corpus` and wrap it as Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    qtok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    qtok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    qtok.chat_template = CHAT_TEMPLATE
    return qtok


def model_config(shape: str, tokenizer: Any) -> dict[str, Any]:
    """The config.json dict of `shape`, with special-token ids taken from `tokenizer`."""
    if shape not in SHAPE_FAMILY:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPE_FAMILY)}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if shape in QWEN3_VL_SHAPES:
        return _qwen3_vl_config(shape, tokenizer, ids)
    spec = json.loads(json.dumps(SHAPES[shape]))
    vocab = spec["vocab_size"] or len(tokenizer)
    if max(ids.values()) >= vocab:
        raise ValueError(f"tokenizer ids reach {max(ids.values())}, beyond vocab_size {vocab}")
    cfg = {
        **_COMMON,
        **spec,
        "vocab_size": vocab,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
    }
    cfg["vision_config"]["model_type"] = "qwen2_5_vl"
    return cfg


def _qwen3_vl_config(shape: str, tokenizer: Any, ids: dict[str, int]) -> dict[str, Any]:
    """Qwen3VLConfig keyword arguments of a Qwen3-VL shape (nested text and vision configs)."""
    spec = json.loads(json.dumps(QWEN3_VL_SHAPES[shape]))
    text = spec["text_config"]
    text["vocab_size"] = text["vocab_size"] or len(tokenizer)
    if max(ids.values()) >= text["vocab_size"]:
        raise ValueError(f"tokenizer ids reach {max(ids.values())}, beyond vocab_size {text['vocab_size']}")
    text.update(
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        }
    )
    return {
        **spec,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _processor(fam: Family, model_type: str, tokenizer: Any) -> Any:
    """The family's processor with the released image processor settings (as qwenvl-roi tiny-model)."""
    import transformers
    from transformers import Qwen2VLImageProcessor

    arch = fam.tiny_arch(model_type)
    image_kwargs: dict[str, Any] = {
        "min_pixels": fam.processor_min_pixels,
        "max_pixels": fam.processor_max_pixels,
        "patch_size": fam.patch_size,
        "merge_size": fam.merge_size,
    }
    if fam.vision_schema == "qwen3":
        image_kwargs.update({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    if fam.name == "qwen2_5_vl":
        template = CHAT_TEMPLATE
    else:
        tokenizer.chat_template = template = chat_template(fam.default_system)
    return getattr(transformers, arch.processor_class)(
        image_processor=Qwen2VLImageProcessor(**image_kwargs),
        video_processor=getattr(transformers, arch.video_processor_class)(),
        tokenizer=tokenizer,
        chat_template=template,
    )


def build_model_dir(
    out_dir: Path,
    shape: str,
    corpus: Iterable[str],
    device: str = "cpu",
    dtype: str = "bfloat16",
    seed: int = 0,
) -> dict[str, Any]:
    """Write tokenizer, processor, config and random weights of `shape` into `out_dir`; return timings.

    Weights are created directly on `device` (a GPU makes the 7B shape's random init take seconds) and
    saved once, so every benchmark run loads the same checkpoint through LLaMA-Factory's normal path.
    """
    import torch
    import transformers

    fam = shape_family(shape)
    arch = fam.tiny_arch(SHAPE_FAMILY[shape][1])
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus)
    processor = _processor(fam, arch.model_type, tokenizer)
    processor.save_pretrained(str(out_dir))
    cfg_dict = model_config(shape, tokenizer)
    config = getattr(transformers, arch.config_class)(**cfg_dict)
    t1 = time.perf_counter()
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, arch.model_class)._from_config(config, dtype=getattr(torch, dtype))
    n_params = sum(p.numel() for p in model.parameters())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    model.save_pretrained(str(out_dir), max_shard_size="4GB")
    t3 = time.perf_counter()
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    info = {
        "shape": shape,
        "family": fam.name,
        "params": n_params,
        "dtype": dtype,
        "tokenizer_vocab": len(tokenizer),
        "init_s": round(t2 - t1, 2),
        "save_s": round(t3 - t2, 2),
        "total_s": round(t3 - t0, 2),
    }
    _write_json(out_dir / "bench_model_info.json", info)
    return info
