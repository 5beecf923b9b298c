"""The stock web UI with each family: picking the recipes' base model sets the family's template, and the
ROI datasets of a dataset_info folder are listed for the Train tab (LLaMA-Factory's functions, no browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenvl_roi.families import FAMILY_NAMES, family


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_model_name_sets_the_family_template(name: str) -> None:
    from llamafactory.extras.constants import SUPPORTED_MODELS, DownloadSource
    from llamafactory.webui.common import get_template, is_multimodal

    fam = family(name)
    names = [k for k, v in SUPPORTED_MODELS.items() if v.get(DownloadSource.DEFAULT) == fam.default_model]
    assert names, f"{fam.default_model} is not in LLaMA-Factory's model list"
    for model_name in names:
        assert get_template(model_name) == fam.template, model_name
        assert is_multimodal(model_name), model_name


def test_train_tab_lists_the_roi_datasets(tmp_path: Path) -> None:
    from llamafactory.webui.control import list_datasets

    entry = {"file_name": "sft_train.json", "formatting": "sharegpt", "columns": {"messages": "messages"}}
    info = {
        f"{prefix}_{split}": {**entry, "roi_meta": {"model_family": fam, "image_max_pixels": 1048576}}
        for prefix, fam in (("roi", "qwen2_5_vl"), ("q3", "qwen3_vl"), ("q35", "qwen3_5"))
        for split in ("train", "val", "test", "image_train", "image_val")
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    listed = list_datasets(str(tmp_path), "Supervised Fine-Tuning").constructor_args["choices"]
    assert [c[0] if isinstance(c, tuple) else c for c in listed] == list(info)
