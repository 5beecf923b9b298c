"""Portable image paths: how the converters write them and the ONE way every reader resolves them.

Contract (docs/architecture.md): a relative ``image`` in a ``regions_*.jsonl`` file is relative to the folder
that holds that regions file (out_dir). ``sft_*.json`` images are relative to the LLaMA-Factory dataset_dir
(``dataset_info_dir``), which LLaMA-Factory uses as ``media_dir`` by default
(llamafactory/data/converter.py ``DatasetConverter._find_medias``). Moving data, out_dir and dataset_info
together therefore keeps every path valid.
"""

from __future__ import annotations

import os
from pathlib import Path


def relative_to_folder(target: str | Path, folder: str | Path) -> str:
    """``target`` as a POSIX path relative to ``folder`` (absolute when no relative path exists, e.g. another
    drive on Windows)."""
    try:
        rel = os.path.relpath(os.path.abspath(target), os.path.abspath(folder))
    except ValueError:
        return Path(os.path.abspath(target)).as_posix()
    return Path(rel).as_posix()


def resolve_image(image: str | Path, listing_file: str | Path) -> Path:
    """The file a sample's ``image`` names: absolute as is, relative against the folder of the JSONL/JSON
    file that lists it (a regions_*.jsonl: out_dir). Normalised so two spellings of one file compare equal."""
    p = Path(image)
    if not p.is_absolute():
        p = Path(os.path.abspath(listing_file)).parent / p
    return Path(os.path.normpath(p))
