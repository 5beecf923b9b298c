"""Web UI integration: `llamafactory-cli webui` started inside a qwenvl-roi project opens on its datasets.

Why: the stock web UI's "Data dir" box starts at ``data`` (``llamafactory.webui.common.DEFAULT_DATA_DIR``),
so a user who launches it from the project root sees no ROI datasets until they retype the folder. When
the working directory holds ``dataset_info/dataset_info.json`` (the project's LLaMA-Factory dataset
folder, see docs/architecture.md), this patch makes that folder the default. Outside a project nothing
changes. ``QWENVL_ROI_DATA_DIR`` names another folder explicitly.

The components read the constant with ``from ..common import DEFAULT_DATA_DIR`` when they are imported,
so the patch must run as soon as ``llamafactory.webui.common`` has executed and before the components
load; the plugin's activation registry calls :func:`patch_webui_common` at exactly that point.
The ``roi_`` settings need no web UI change: the Train tab's "Extra arguments" JSON box is merged into
the YAML the web UI launches, and the plugin reads ``roi_`` keys from there like from any recipe.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

#: the module whose import triggers the patch
TARGET_MODULE = "llamafactory.webui.common"
#: environment variable that names the data dir explicitly (wins over the project detection)
ENV_DATA_DIR = "QWENVL_ROI_DATA_DIR"
#: the project's LLaMA-Factory dataset folder, relative to the project root
PROJECT_DATA_DIR = "dataset_info"
DATASET_INFO_FILE = "dataset_info.json"


def project_data_dir(cwd: Path | None = None) -> str | None:
    """The data dir the web UI should open with, or None to keep LLaMA-Factory's default."""
    explicit = os.environ.get(ENV_DATA_DIR, "").strip()
    if explicit:
        return explicit
    root = Path.cwd() if cwd is None else cwd
    if (root / PROJECT_DATA_DIR / DATASET_INFO_FILE).is_file():
        return PROJECT_DATA_DIR
    return None


def patch_webui_common(module: ModuleType) -> None:
    """Point ``DEFAULT_DATA_DIR`` of ``llamafactory.webui.common`` at the project's dataset folder."""
    data_dir = project_data_dir()
    if data_dir is not None and hasattr(module, "DEFAULT_DATA_DIR"):
        module.DEFAULT_DATA_DIR = data_dir
