"""Stop before the first step when the dataset was built for other image pixel limits than the recipe's.

Qwen2.5-VL prompts carry box coordinates in pixels of the image after LLaMA-Factory's resize, so a dataset
converted for ``image_max_pixels`` A but trained with B teaches wrong coordinates without any error. The
converters record their limits in each dataset_info.json entry as ``roi_meta`` (docs/architecture.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DATA_CONFIG = "dataset_info.json"


class PixelLimitError(ValueError):
    """Dataset built for other pixel limits than the recipe trains with."""


def _names(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def roi_metas(dataset_dir: str, datasets: list[str]) -> tuple[Path, dict[str, dict[str, Any]]]:
    """(dataset_info.json path, {dataset name: its roi_meta}) for the named datasets that have one.

    Entries without roi_meta (stock datasets) and online dataset dirs give nothing."""
    path = Path(dataset_dir) / DATA_CONFIG
    if not datasets or dataset_dir.startswith("REMOTE:") or not path.is_file():
        return path, {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PixelLimitError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
    metas: dict[str, dict[str, Any]] = {}
    for name in datasets:
        entry = info.get(name)
        if not isinstance(entry, dict) or "roi_meta" not in entry:
            continue
        meta = entry["roi_meta"]
        if not isinstance(meta, dict):
            raise PixelLimitError(f"{path}: dataset {name!r}: roi_meta must be an object, got {meta!r}")
        metas[name] = meta
    return path, metas


def check_pixel_limits(
    dataset_dir: str, datasets: list[str], image_max_pixels: int, image_min_pixels: int
) -> None:
    """Raise PixelLimitError naming the file, dataset and both values if any roi_meta disagrees.

    Entries without roi_meta (stock datasets) and online dataset dirs are not checked.
    """
    path, metas = roi_metas(dataset_dir, datasets)
    problems: list[str] = []
    for name, meta in metas.items():
        for key, recipe_value in (
            ("image_max_pixels", image_max_pixels),
            ("image_min_pixels", image_min_pixels),
        ):
            if key not in meta:
                raise PixelLimitError(f"{path}: dataset {name!r}: roi_meta has no {key!r}")
            built = meta[key]
            if not isinstance(built, int) or isinstance(built, bool):
                raise PixelLimitError(
                    f"{path}: dataset {name!r}: roi_meta.{key} must be an integer, got {built!r}"
                )
            if built != recipe_value:
                problems.append(
                    f"dataset {name!r} was built with {key}={built} but the recipe trains with {recipe_value}"
                )
    if problems:
        raise PixelLimitError(
            f"{os.fspath(path)}: "
            + "; ".join(problems)
            + ". Box coordinates in the prompts depend on these limits: set image_max_pixels and "
            "image_min_pixels in the recipe to the dataset's values, or rebuild the dataset "
            "(qwenvl-roi convert) with the recipe's."
        )


def dataset_names(data_args: Any) -> list[str]:
    """The train and eval dataset names of LLaMA-Factory's parsed data arguments."""
    return _names(getattr(data_args, "dataset", None)) + _names(getattr(data_args, "eval_dataset", None))


def check_from_args(model_args: Any, data_args: Any) -> None:
    """check_pixel_limits for LLaMA-Factory's parsed arguments (train and eval datasets)."""
    datasets = dataset_names(data_args)
    check_pixel_limits(
        str(getattr(data_args, "dataset_dir", "data")),
        datasets,
        int(model_args.image_max_pixels),
        int(model_args.image_min_pixels),
    )
