"""The tiny model builder: loadable by plain transformers, deterministic, vocab_texts words single tokens."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from qwenvl_roi.tiny_model import build_tiny_model


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


# arch -> (tokenizer class, patch size, processor min / max pixels) of the released checkpoints
RELEASED = {
    "qwen2_5_vl": ("Qwen2Tokenizer", 14, 3136, 12845056),
    "qwen2_vl": ("Qwen2Tokenizer", 14, 3136, 12845056),
    "qwen3_vl": ("Qwen2Tokenizer", 16, 65536, 16777216),
    "qwen3_vl_moe": ("Qwen2Tokenizer", 16, 65536, 16777216),
    "qwen3_5": ("Qwen3_5Tokenizer", 16, 65536, 16777216),
    "qwen3_5_moe": ("Qwen3_5Tokenizer", 16, 65536, 16777216),
}


@pytest.mark.parametrize("arch", list(RELEASED))
def test_tiny_model_forward_with_image(arch: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if arch.endswith("_moe"):  # no session fixture: built here (about a second)
        path = build_tiny_model(tmp_path / arch, arch)
    else:
        path = request.getfixturevalue(f"tiny_{arch}")
    tokenizer_class, patch, min_pixels, max_pixels = RELEASED[arch]
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor.tokenizer).__name__ == tokenizer_class
    assert processor.video_processor is not None
    # the released processors' grid and limits, which the converters' coordinate frames assume
    assert processor.image_processor.patch_size == patch and processor.image_processor.merge_size == 2
    assert processor.image_processor.size["shortest_edge"] == min_pixels
    assert processor.image_processor.size["longest_edge"] == max_pixels
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.model_type == arch
    assert model.config.vision_config.depth == 4
    if arch.startswith("qwen3_vl"):  # 3 deepstack mergers, each feeding a language layer below the last
        assert len(model.model.visual.deepstack_merger_list) == 3
        assert model.config.text_config.num_hidden_layers >= 4
    if arch.startswith("qwen3_5"):  # both attention kinds of the hybrid stack
        assert set(model.config.text_config.layer_types) == {"linear_attention", "full_attention"}
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it normal?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    assert text.startswith("<|im_start|>system\n") == arch.startswith("qwen2")  # Qwen3: no default system
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 84), (90, 120, 30))], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == len(processor.tokenizer)
    assert torch.isfinite(logits).all()


def test_tiny_model_cli_builds_a_moe_arch(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwenvl_roi.cli",
            "tiny-model",
            "--arch",
            "qwen3_vl_moe",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl_moe" and config["text_config"]["num_local_experts"] == 4


def test_vocab_texts_single_tokens_and_determinism(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    words = ["seepage", "spalling", "efflorescence", "abnormal"]
    a = build_tiny_model(tmp_path / "a", "qwen2_5_vl", vocab_texts=[" ".join(words)], seed=3)
    b = build_tiny_model(tmp_path / "b", "qwen2_5_vl", vocab_texts=[" ".join(words)], seed=3)
    assert _digest(a) == _digest(b)
    tok = AutoTokenizer.from_pretrained(a)
    for word in words:
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, word
    for digit in "0123456789":
        assert len(tok.encode(digit, add_special_tokens=False)) == 1
    assert tok.decode(tok.encode("R12: [3, 45]\nefflorescence")) == "R12: [3, 45]\nefflorescence"


def test_bad_size_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vision_hidden must be >= 64"):
        build_tiny_model(tmp_path / "x", "qwen2_vl", size={"vision_hidden": 32})
    with pytest.raises(ValueError, match="arch must be one of"):
        build_tiny_model(tmp_path / "x", "llava")
