"""Fixtures for the converter tests: tiny images and annotation files written on the fly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    """A small flat image (content is irrelevant to the converters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode == "L" else (120, 120, 120)).save(path)
    return path


def write_txt(path: Path, text: str, encoding: str = "utf-8", bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(encoding)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a data.yaml under tmp_path pointing at tmp_path/abn, tmp_path/nor, tmp_path/out."""

    def _make(**overrides: Any) -> Path:
        cfg: dict[str, Any] = {
            "abnormal_dir": str(tmp_path / "abn"),
            "normal_dir": str(tmp_path / "nor"),
            "out_dir": str(tmp_path / "out"),
            "dataset_info_dir": str(tmp_path / "dinfo"),
        }
        cfg.update(overrides)
        path = tmp_path / "data.yaml"
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
        return path

    return _make


def simple_dataset(root: Path, n_abnormal: int = 12, n_normal: int = 12, folders: int = 4) -> None:
    """Clean dataset: abnormal images with 1-3 boxes spread over ``folders`` sub-folders, normals likewise."""
    for i in range(n_abnormal):
        d = root / "abn" / f"batch{i % folders}"
        write_image(d / f"a{i:03d}.jpg", (320, 240))
        lines = [
            f"a{i:03d}.jpg;{10 + 5 * j};{20 + 7 * j};{60 + 5 * j};{80 + 7 * j};{['crack', 'spall'][j % 2]}"
            for j in range(1 + i % 3)
        ]
        write_txt(d / f"a{i:03d}.txt", "\n".join(lines) + "\n")
    for i in range(n_normal):
        write_image(root / "nor" / f"scene{i % folders}" / f"n{i:03d}.png", (320, 240))


def trainer_pixels(path: Path, image_max_pixels: int = 1048576, image_min_pixels: int = 1024) -> np.ndarray:
    """The image exactly as LLaMA-Factory hands it to the processor: the qwen2_vl template's mm_plugin
    (llamafactory/data/mm_plugin.py: Image.open, _preprocess_image's resize and convert("RGB"))."""
    from llamafactory.data.template import TEMPLATES

    plugin = TEMPLATES["qwen2_vl"].mm_plugin
    out = plugin._regularize_images(
        [str(path)], image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels
    )["images"][0]
    assert out.mode == "RGB"
    return np.asarray(out)


def read_regions(out: Path) -> list[dict[str, Any]]:
    """Every sample of regions_{train,val,test}.jsonl."""
    return [
        json.loads(line)
        for sp in ("train", "val", "test")
        for line in (out / f"regions_{sp}.jsonl").read_text(encoding="utf-8").splitlines()
    ]


class Files:
    """Helpers handed to tests through the ``files`` fixture (importlib mode cannot import conftest)."""

    image = staticmethod(write_image)
    txt = staticmethod(write_txt)
    simple = staticmethod(simple_dataset)
    trainer_pixels = staticmethod(trainer_pixels)
    regions = staticmethod(read_regions)


@pytest.fixture(scope="session")
def files() -> Files:
    return Files()
