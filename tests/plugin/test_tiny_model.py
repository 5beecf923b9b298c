"""The tiny model builder: loadable by plain transformers, deterministic, vocab_texts words single tokens."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from qwenvl_roi.tiny_model import build_tiny_model


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("fixture", ["tiny_qwen2_5_vl", "tiny_qwen2_vl"])
def test_tiny_model_forward_with_image(fixture: str, request: pytest.FixtureRequest) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = request.getfixturevalue(fixture)
    processor = AutoProcessor.from_pretrained(path)
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer"
    assert processor.video_processor is not None
    # the released Qwen processors' limits, which the converters' coordinate frames assume
    assert processor.image_processor.size["shortest_edge"] == 3136
    assert processor.image_processor.size["longest_edge"] == 12845056
    model = AutoModelForImageTextToText.from_pretrained(path)
    assert model.config.vision_config.depth == 4
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it normal?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 84), (90, 120, 30))], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == len(processor.tokenizer)
    assert torch.isfinite(logits).all()


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
