"""`qwenvl-roi build-sft`: regions_*.jsonl -> LLaMA-Factory sharegpt files + dataset_info.json entries.

Region samples: ``sft_{train,val,test}.json`` (datasets ``<prefix>_train/_val/_test``); image-level samples
(whole image, one verdict): ``sft_image_{train,val}.json`` (``<prefix>_image_train/_image_val``). Entries in
dataset_info.json are merged, never clobbering other datasets.
"""

from __future__ import annotations

import argparse
import json
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from qwenvl_roi.errors import ConvertError, OutputError
from qwenvl_roi.fileio import iter_jsonl, json_refusal, write_json, write_json_array
from qwenvl_roi.locks import locked
from qwenvl_roi.schemas import errors_text
from qwenvl_roi.schemas.regions import RegionSample

from .config import DataConfig, coerce_config, load_data_config, report_error
from .meta import META_FILE, DatasetMeta, build_meta, load_dataset_meta
from .paths import relative_to_folder, resolve_image
from .prompt import build_image_record, build_record, framed_boxes
from .runtime import paused_gc
from .split import IMAGE_SPLITS, SPLITS

SHAREGPT_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def read_regions(path: Path) -> Iterator[dict[str, Any]]:
    """Samples of a regions_*.jsonl file, each checked against the regions contract (qwenvl_roi.schemas:
    what prepare writes); a bad line is an error naming file, line and field. The samples are yielded as
    read (dicts), the form prepare hands build-sft in memory."""
    not_found = f"{path} not found (run `qwenvl-roi prepare` first)"
    for lineno, sample in iter_jsonl(path, ConvertError, not_found):
        try:
            RegionSample.model_validate(sample)
        except ValidationError as exc:
            raise ConvertError(f"{path}:{lineno}: not a regions sample ({errors_text(exc)})") from None
        yield sample


def dataset_names(prefix: str) -> dict[str, str]:
    """dataset name -> sft file name."""
    names = {f"{prefix}_{sp}": f"sft_{sp}.json" for sp in SPLITS}
    names.update({f"{prefix}_image_{sp}": f"sft_image_{sp}.json" for sp in IMAGE_SPLITS})
    return names


def _rel(target: Path, start: Path) -> str:
    return relative_to_folder(target, start)


class MediaPaths:
    """A regions file's image paths (relative to out_dir) rewritten relative to the dataset_info folder, which
    LLaMA-Factory uses as ``media_dir`` by default (llamafactory/data/converter.py ``_find_medias``)."""

    def __init__(self, regions_file: Path, dataset_dir: Path):
        self.regions_file = regions_file
        # one relpath for the folder; each image is then joined to it (out_dir is a real folder we wrote)
        self.prefix = relative_to_folder(regions_file.parent, dataset_dir)
        self.dataset_dir = dataset_dir
        self._folders: dict[str, str] = {}  # an image folder -> that folder seen from dataset_dir
        self._resolved: dict[str, str] = {}  # absolute and Windows paths (each image gives two records)

    def __call__(self, image: str) -> str:
        if posixpath.isabs(image) or "\\" in image:  # absolute, or a Windows path: resolve it in full
            done = self._resolved.get(image)
            if done is None:
                done = self._resolved[image] = relative_to_folder(
                    resolve_image(image, self.regions_file), self.dataset_dir
                )
            return done
        folder, _, name = image.rpartition("/")
        if name in ("", ".", ".."):  # not a file name: normalise the whole path
            return posixpath.normpath(posixpath.join(self.prefix, image))
        # normpath(join(prefix, folder/name)) == normpath(join(prefix, folder))/name for a plain file name;
        # the folders are few, so each is normalised once
        done = self._folders.get(folder)
        if done is None:
            done = self._folders[folder] = posixpath.normpath(posixpath.join(self.prefix, folder))
        if done == ".":
            return name
        return done + name if done.endswith("/") else f"{done}/{name}"  # the root ("/", "//") ends in "/"


def _with_media(record: dict[str, Any], media: MediaPaths) -> dict[str, Any]:
    record["images"] = [media(p) for p in record["images"]]
    return record


def dataset_info_entry(file_name: str, roi_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """One dataset_info.json entry for a sharegpt file of ours (``roi_meta``: see docs/architecture.md)."""
    entry: dict[str, Any] = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": dict(SHAREGPT_TAGS),
    }
    if roi_meta is not None:
        entry["roi_meta"] = dict(roi_meta)
    return entry


def merge_dataset_info(cfg: DataConfig, meta: DatasetMeta) -> tuple[Path, list[str]]:
    """Add or replace this dataset's entries in dataset_info.json; every other entry is kept as it was.
    Returns the file and warnings (entries of the same name that pointed at another converted set).

    Under a blocking lock: a second convert sharing the dataset_info folder waits, then reads the file
    again and merges its entries into it (all of a set's entries land in one atomic replace). Called once
    the set is in out_dir: a failure here says so and what to run.
    """
    path = cfg.dataset_info_dir / "dataset_info.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with locked(path.parent):
            return _merge_dataset_info(cfg, meta, path)
    except (OSError, ConvertError) as exc:
        why = str(exc) if isinstance(exc, ConvertError) else f"{exc.strerror or exc} ({exc.filename or path})"
        raise ConvertError(
            f"{cfg.out_dir} holds the new converted set, but {path} was not updated: {why}; fix it and run "
            "`qwenvl-roi build-sft` to register the datasets"
        ) from None


def read_dataset_info(path: Path) -> dict[str, Any]:
    """The entries of a dataset_info.json (none when it does not exist); ConvertError when it is not a
    readable UTF-8 JSON object (it is never overwritten then). Also checked before any work."""
    if path.exists() and not path.is_file():
        raise ConvertError(f"{path}: is not a file")
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8-sig") or "{}")
    except UnicodeDecodeError as exc:
        raise ConvertError(
            f"{path}: not UTF-8 ({exc.reason} at byte {exc.start + 1}); not overwriting it"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); not overwriting it") from None
    except (ValueError, RecursionError) as exc:  # an integer of > 4300 digits; nesting too deep
        raise ConvertError(f"{path}: invalid JSON ({json_refusal(exc)}); not overwriting it") from None
    except OSError as exc:
        raise ConvertError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(info, dict):
        raise ConvertError(f"{path}: expected a JSON object of dataset entries; not overwriting it")
    return info


def check_dataset_info(cfg: DataConfig) -> None:
    """Before the work: the dataset_info folder can hold dataset_info.json, which is readable if present."""
    folder = cfg.dataset_info_dir
    if folder.exists() and not folder.is_dir():
        raise ConvertError(f"dataset_info_dir {folder}: exists and is not a folder")
    read_dataset_info(folder / "dataset_info.json")


def _merge_dataset_info(cfg: DataConfig, meta: DatasetMeta, path: Path) -> tuple[Path, list[str]]:
    info_dir = cfg.dataset_info_dir
    info = read_dataset_info(path)
    roi_meta = {
        "image_max_pixels": meta.image_max_pixels,
        "image_min_pixels": meta.image_min_pixels,
        "model_family": meta.model_family,
        "meta_file": _rel(cfg.out_dir / META_FILE, info_dir),
    }
    warnings = []
    for name, file_name in dataset_names(cfg.dataset_prefix).items():
        entry = dataset_info_entry(_rel(cfg.out_dir / file_name, info_dir), roi_meta)
        before = info.get(name)
        if isinstance(before, dict) and before.get("file_name") not in (None, entry["file_name"]):
            warnings.append(
                f"{path}: {name} pointed at {before['file_name']} and now at {entry['file_name']} "
                "(set dataset_prefix to keep both)"
            )
        info[name] = entry
    write_json(path, info)
    return path, warnings


def build_sft(
    config: DataConfig | str | Path | dict,
    progress: bool | None = None,
    samples: dict[str, list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Write the sharegpt files and dataset_info entries; returns record counts per dataset name.

    ``samples`` (split -> samples, as prepare returns them) skips re-reading regions_*.jsonl. out_dir is
    replaced as one set (qwenvl_roi.outputs.staged), then registered in dataset_info.json.
    """
    from .prepare import staged_out_dir

    cfg = coerce_config(config)
    with paused_gc():
        if not (cfg.out_dir / META_FILE).is_file():  # before staging: nothing to build from
            load_dataset_meta(cfg.out_dir)
        check_dataset_info(cfg)
        with staged_out_dir(cfg) as stage:
            counts, meta = build_into(cfg, stage, progress, samples)
        info_path, warnings = merge_dataset_info(cfg, meta)
    return {
        "records": counts,
        "dataset_info": str(info_path),
        "out_dir": str(cfg.out_dir),
        "warnings": warnings,
    }


def build_into(
    cfg: DataConfig,
    write_dir: Path,
    progress: bool | None = None,
    samples: dict[str, list[dict[str, Any]]] | None = None,
) -> tuple[dict[str, int], DatasetMeta]:
    """The sharegpt files written into ``write_dir`` (the staging folder of cfg.out_dir, holding prepare's
    outputs); image paths are computed for cfg.out_dir. Returns (records per dataset, the meta used)."""
    out_dir = cfg.out_dir
    old = load_dataset_meta(write_dir)
    meta = build_meta(cfg, old.labels, image_bit_depth=old.image_bit_depth)  # found by prepare's survey
    if meta != old:  # prompt texts or pixel limits changed since prepare: record what the files now use
        write_json(write_dir / META_FILE, meta.model_dump())
    disable = None if progress is None else not progress
    counts: dict[str, int] = {}
    for sp in SPLITS:
        if samples is not None:
            split_samples = samples[sp]
        else:
            split_samples = list(read_regions(out_dir / f"regions_{sp}.jsonl"))  # = the staged copy
        media = MediaPaths(out_dir / f"regions_{sp}.jsonl", cfg.dataset_info_dir)
        framed = framed_boxes(split_samples, meta)  # every region of the split framed at once
        records = (
            _with_media(build_record(s, meta, framed=boxes), media)
            for s, boxes in zip(
                tqdm(split_samples, desc=f"build-sft: {sp}", unit="sample", disable=disable),
                framed,
                strict=True,
            )
        )
        counts[f"{cfg.dataset_prefix}_{sp}"] = write_json_array(write_dir / f"sft_{sp}.json", records)
        if sp in IMAGE_SPLITS:
            seen: set[str] = set()
            firsts = []
            for s in split_samples:
                if s["image"] not in seen:
                    seen.add(s["image"])
                    firsts.append(s)
            counts[f"{cfg.dataset_prefix}_image_{sp}"] = write_json_array(
                write_dir / f"sft_image_{sp}.json",
                (_with_media(build_image_record(s, meta), media) for s in firsts),
            )
    return counts, meta


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="data.yaml (see configs/data.yaml)")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"{name}: {n} records" for name, n in summary["records"].items()]
    lines.append(f"updated {summary['dataset_info']}")
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        summary = build_sft(load_data_config(args.config))
    except (ConvertError, OutputError) as exc:
        return report_error(exc)
    print("\n".join(summary_lines(summary)))
    return 0
