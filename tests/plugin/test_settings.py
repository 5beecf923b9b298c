"""roi_ keys: taken out of LLaMA-Factory's arguments, validated with messages that name the key."""

from __future__ import annotations

import pytest
from qwenvl_roi.plugin import settings
from qwenvl_roi.plugin.dataset_match import DatasetMismatchError, check_pixel_limits


def test_extract_from_recipe_dict() -> None:
    args = {"learning_rate": 1e-4, "roi_train_projector": True, "roi_vision_lora_top_blocks": 4}
    rest, roi = settings.extract(args)
    assert rest == {"learning_rate": 1e-4}
    assert roi is not None and roi.roi_train_projector and roi.roi_vision_lora_top_blocks == 4
    assert roi.lr("language", 3e-4) == 3e-4
    assert roi.lr("projector", 3e-4) == 3e-4


def test_no_roi_keys_leaves_arguments_untouched() -> None:
    args = {"learning_rate": 1e-4, "lora_target": "all"}
    rest, roi = settings.extract(args)
    assert rest is args and roi is None
    argv = ["--learning_rate", "1e-4"]
    rest_list, roi = settings.extract(argv)
    assert rest_list is argv and roi is None


def test_extract_from_command_line_list() -> None:
    argv = [
        "--model_name_or_path",
        "m",
        "--roi_lr_projector",
        "2e-4",
        "--roi_train_projector=true",
        "--do_train",
    ]
    rest, roi = settings.extract(argv)
    assert rest == ["--model_name_or_path", "m", "--do_train"]
    assert roi is not None and roi.roi_lr_projector == 2e-4 and roi.roi_train_projector is True


def test_misspelt_key_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(settings.RoiSettingsError) as info:
        settings.extract({"roi_vison_lora_top_blocks": 2})
    message = str(info.value)
    assert "'roi_vison_lora_top_blocks'" in message
    assert "did you mean 'roi_vision_lora_top_blocks'" in message
    for key in settings.ALLOWED_KEYS:
        assert key in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("roi_vision_lora_top_blocks", -1),
        ("roi_vision_lora_top_blocks", 2.5),
        ("roi_vision_unfreeze_top_blocks", "two"),
        ("roi_train_projector", "maybe"),
        ("roi_lr_vision_lora", 0),
        ("roi_lr_language", "fast"),
    ],
)
def test_bad_values_are_clear_errors(key: str, value: object) -> None:
    with pytest.raises(settings.RoiSettingsError, match=f"bad qwenvl-roi setting: {key} = {value!r}"):
        settings.extract({key: value})


def _info(tmp_path, meta) -> None:
    import json

    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"roi_train": {"file_name": "x.json", "roi_meta": meta}, "plain": {"file_name": "y.json"}})
    )


def test_pixel_check(tmp_path) -> None:
    meta = {
        "image_max_pixels": 1048576,
        "image_min_pixels": 1024,
        "model_family": "qwen2_5_vl",
        "meta_file": "m",
    }
    _info(tmp_path, meta)
    check_pixel_limits(str(tmp_path), ["roi_train", "plain"], 1048576, 1024)
    check_pixel_limits(str(tmp_path), ["plain"], 1, 1)  # entries without roi_meta are stock datasets
    check_pixel_limits(str(tmp_path / "missing"), ["roi_train"], 1, 1)  # no dataset_info.json: not ours
    with pytest.raises(DatasetMismatchError) as info:
        check_pixel_limits(str(tmp_path), ["roi_train"], 589824, 1024)
    message = str(info.value)
    assert str(tmp_path / "dataset_info.json") in message
    assert "'roi_train'" in message and "image_max_pixels=1048576" in message and "589824" in message
    _info(tmp_path, {**meta, "image_min_pixels": "1024"})
    with pytest.raises(DatasetMismatchError, match="roi_meta.image_min_pixels must be an integer"):
        check_pixel_limits(str(tmp_path), ["roi_train"], 1048576, 1024)
    (tmp_path / "dataset_info.json").write_text('{\n  "roi_train": \n}')
    with pytest.raises(DatasetMismatchError, match=r"dataset_info.json:3: not valid JSON"):
        check_pixel_limits(str(tmp_path), ["roi_train"], 1048576, 1024)
