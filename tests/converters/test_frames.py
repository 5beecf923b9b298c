"""Coordinate frames against the real components: LLaMA-Factory's Qwen2-VL plugin resize, then the real
Qwen2-VL image processor (used by Qwen2.5-VL too); the grid it reports * 14 is the frame the model sees."""

from __future__ import annotations

import random

import pytest
from PIL import Image
from qwenvl_roi.converters.config import DataConfig
from qwenvl_roi.converters.frames import box_to_frame, model_frame_size
from qwenvl_roi.converters.meta import build_meta

SIZES = [
    (2000, 1500),
    (1, 1),
    (10, 5000),
    (4000, 3000),
    (1024, 1024),
    (1025, 1023),
    (33, 33),
    (300, 7),
    (5000, 20),
]
LIMITS = [(1048576, 1024), (50176, 1024), (200704, 200704)]
PROCESSOR_LIMITS = [(3136, 12845056), (3136, 1003520)]


@pytest.fixture(scope="module")
def real_frame():
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import Qwen2VLImageProcessor

    plugin = get_mm_plugin("qwen2_vl", image_token="<|image_pad|>")

    def frame(w: int, h: int, max_px: int, min_px: int, pmin: int, pmax: int) -> tuple[int, int]:
        image = plugin._preprocess_image(
            Image.new("RGB", (w, h)), image_max_pixels=max_px, image_min_pixels=min_px
        )
        processor = Qwen2VLImageProcessor(min_pixels=pmin, max_pixels=pmax)
        _, gh, gw = processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
        return gw * 14, gh * 14

    return frame


def test_model_frame_size_matches_llamafactory_and_processor(real_frame) -> None:
    rng = random.Random(7)
    sizes = SIZES + [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(6)]
    for w, h in sizes:
        for max_px, min_px in LIMITS:
            for pmin, pmax in PROCESSOR_LIMITS:
                expected = real_frame(w, h, max_px, min_px, pmin, pmax)
                assert model_frame_size(w, h, max_px, min_px, pmin, pmax) == expected, (
                    w,
                    h,
                    max_px,
                    min_px,
                    pmax,
                )


def test_qwen2_5_vl_boxes_scale_into_the_resized_frame() -> None:
    meta = build_meta(DataConfig(image_max_pixels=1048576), ["crack"])
    fw, fh = meta.frame_size(2000, 1500)
    assert (fw, fh) == (1176, 896)  # 2000x1500 -> 1182x886 (LLaMA-Factory) -> 1176x896 (multiples of 28)
    assert meta.box_in_frame([0, 0, 2000, 1500], 2000, 1500) == [0, 0, 1176, 896]
    assert meta.box_in_frame([1000, 750, 1500, 1125], 2000, 1500) == [588, 448, 882, 672]
    small = build_meta(DataConfig(image_max_pixels=224 * 224, image_min_pixels=1024), [])
    assert small.frame_size(224, 224) == (224, 224)
    assert small.box_in_frame([10, 20, 30, 40], 224, 224) == [10, 20, 30, 40]


def test_qwen2_vl_boxes_are_normalised_to_0_1000() -> None:
    meta = build_meta(DataConfig(model_family="qwen2_vl"), [])
    assert meta.box_in_frame([0, 0, 2000, 1500], 2000, 1500) == [0, 0, 999, 999]
    assert meta.box_in_frame([500, 300, 1001, 751], 2000, 1500) == [250, 200, 500, 500]
    assert box_to_frame([1, 1, 3, 3], 3, 3, "qwen2_vl") == [333, 333, 999, 999]
