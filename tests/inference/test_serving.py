"""The request body of docs/evaluation.md, sent to `llamafactory-cli api`, becomes the training prompt."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from qwenvl_roi.converters.meta import load_dataset_meta
from qwenvl_roi.converters.prompt import build_record


def test_api_request_reproduces_training_prompt(scored_dataset: Path) -> None:
    from llamafactory.api.chat import _process_request
    from llamafactory.api.protocol import ChatCompletionRequest

    meta = load_dataset_meta(scored_dataset)
    sample = json.loads((scored_dataset / "regions_test.jsonl").read_text().splitlines()[0])
    # --- as in the docs ---
    verdicts = [meta.normal_word] * len(sample["regions"])
    system, user, _ = build_record(sample, meta, verdicts=verdicts)["messages"]
    image = "data:image/png;base64," + base64.b64encode(Path(sample["image"]).read_bytes()).decode()
    body = {
        "model": "qwen",
        "temperature": 0,
        "messages": [
            system,
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image}},
                    {"type": "text", "text": user["content"].removeprefix("<image>")},
                ],
            },
        ],
    }
    # ----------------------
    messages, got_system, tools, images, _, _ = _process_request(ChatCompletionRequest.model_validate(body))
    training = build_record(sample, meta)["messages"]
    assert got_system == training[0]["content"]
    assert messages == [{"role": "user", "content": training[1]["content"]}]
    assert tools is None and images is not None and len(images) == 1
