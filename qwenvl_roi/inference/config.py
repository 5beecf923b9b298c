"""The small inference config that `eval` writes and `predict` / the Python API read by default.

It carries the decision threshold chosen on validation, so that the threshold used on the blind test set
and in the user's other project is the one fixed on val, never re-tuned on test. The model of the file,
``InferenceConfig``, is one of the file contracts in ``qwenvl_roi.schemas`` (re-exported here).
"""

from __future__ import annotations

from pathlib import Path

from qwenvl_roi.errors import InputError
from qwenvl_roi.fileio import load_json_model, sorted_keys, write_json
from qwenvl_roi.schemas.inference_config import DEFAULT_THRESHOLD, InferenceConfig

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_THRESHOLD",
    "InferenceConfig",
    "find_inference_config",
    "load_inference_config",
    "save_inference_config",
]

CONFIG_FILE_NAME = "qwenvl_roi_inference.json"


def load_inference_config(path: str | Path) -> InferenceConfig:
    """Read and validate an inference config file, naming the file when it is wrong."""
    path = Path(path)
    if path.is_dir():
        path = path / CONFIG_FILE_NAME
    return load_json_model(
        path, InferenceConfig, InputError, "inference config", f"{path}: inference config not found"
    )


def find_inference_config(*folders: str | Path | None) -> Path | None:
    """First `qwenvl_roi_inference.json` among the folders (adapter first, then model), or None."""
    for folder in folders:
        if folder is None:
            continue
        candidate = Path(folder) / CONFIG_FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def save_inference_config(config: InferenceConfig, folder: str | Path) -> Path:
    """Write the config into `folder` atomically and return its path."""
    path = Path(folder) / CONFIG_FILE_NAME
    write_json(path, sorted_keys(config.model_dump()))
    return path
