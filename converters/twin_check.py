"""prepare's near-duplicate step (issue #20): twins across the dataset kept in one split, or reported.

Why: split groups are folders, so one picture filed twice (re-shot, re-exported as PNG, resized for the
labelling tool, datasets merged) can sit in train and in the blind test, and every test figure is then
inflated. converters/near_duplicates.py finds such twins; this module feeds it prepare's usable images (the
original files, named as the datasets name them), gives ``near_duplicates: group`` the split keys that join
each set's folders, and turns the result into the report section, problems and warnings.

Names: an image is ``<root>/<path relative to its root>`` (root ``abnormal`` for abnormal_dir, ``normal``
for normal_dir), the image part of its samples' ``sample_id`` in regions_*.jsonl: unique, stable, and the
same whether the trainer loads the original or an upright copy in image_cache/.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .images import CACHE_DIR
from .parse import Problem

if TYPE_CHECKING:  # prepare imports this module
    from .config import DataConfig
    from .near_duplicates import Annotation, NearDuplicates, Picture
    from .prepare import ImageEntry

CACHE_FILE = f"{CACHE_DIR}/near_duplicates.json"  # under out_dir: lands and moves with the set
CONFLICT_KIND = "near_duplicate_label_conflict"
UNREADABLE_KIND = "pixels_unreadable"
# Decoding cost on one core (bench/near_duplicates.py on 2.5-3.1 MP pictures: reduced JPEG 3.5 ms, PNG
# 48.9 ms; BENCHMARKS.md), so a pool is started only when the decoding outweighs starting it.
JPEG_MS_PER_MP = 1.3
OTHER_MS_PER_MP = 17.5
OPEN_MS = 0.3  # opening a file and parsing its header
SECONDS_PER_WORKER = 2.0  # a spawned worker spends about a second importing numpy, scipy and PIL


def picture_name(e: ImageEntry) -> str:
    """How the report names an image: the image part of its samples' sample_id."""
    return f"{e.root}/{e.rel}"


def auto_workers(entries: Sequence[ImageEntry]) -> int:
    """Hashing processes worth starting: one unless the expected decoding keeps each worker busy for
    SECONDS_PER_WORKER, at most what near_duplicates.default_workers allows (the CPUs, 8)."""
    from .near_duplicates import default_workers

    ms = 0.0
    for e in entries:
        rate = JPEG_MS_PER_MP if e.path.lower().endswith((".jpg", ".jpeg")) else OTHER_MS_PER_MP
        ms += OPEN_MS + e.width * e.height / 1e6 * rate
    return max(1, min(default_workers(), int(ms / 1000 / SECONDS_PER_WORKER)))


@dataclass
class TwinCheck:
    """The search's outcome for prepare: the twin sets and, for ``group``, each merged folder's split key."""

    mode: str
    result: NearDuplicates
    pictures: list[Picture]
    merged: dict[str, str] = field(default_factory=dict)  # folder group -> the key its union is split by

    def split_key(self, group: str) -> str:
        return self.merged.get(group, group)


def search(
    entries: Sequence[ImageEntry], cfg: DataConfig, write_dir: Path, progress: bool | None
) -> TwinCheck | None:
    """Hash and pair every usable image (groups already set); None with ``near_duplicates: off``, which
    decodes nothing and removes an earlier run's hash cache (the set then holds only what this run made)."""
    cache = write_dir / CACHE_FILE
    if cfg.near_duplicates == "off":
        cache.unlink(missing_ok=True)
        return None
    from .near_duplicates import Annotation, Picture, find_near_duplicates, merged_groups

    pictures = [
        Picture(e.path, picture_name(e), e.group, Annotation.from_boxes(e.source, e.boxes, e.width, e.height))
        for e in entries
    ]
    result = find_near_duplicates(
        pictures,
        cache_file=cache,
        max_distance=cfg.near_duplicate_max_distance,
        min_correlation=cfg.near_duplicate_min_correlation,
        workers=cfg.workers if cfg.workers is not None else auto_workers(entries),
        progress=progress,
    )
    check = TwinCheck(cfg.near_duplicates, result, pictures)
    if cfg.near_duplicates == "group":
        check.merged = merged_groups(result.sets, {p.name: p.group for p in pictures})
    return check


def _describe(a: Annotation) -> str:
    if a.source == "normal":
        return "normal"
    labels: dict[str, int] = {}
    for box in a.boxes:
        labels[box[0]] = labels.get(box[0], 0) + 1
    return "abnormal: " + ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(labels.items()))


def section(
    check: TwinCheck | None,
    entries: Sequence[ImageEntry],
    alone: Sequence[str] | None,
    problems: list[Problem],
) -> tuple[dict[str, Any], list[str]]:
    """The report's ``near_duplicates`` section and prepare's warnings; appends the problems (label
    conflicts, naming both files; pictures whose pixels cannot be decoded). ``alone``: each entry's split
    by its own folder group (holdout and forced splits included), in ``entries`` order."""
    if check is None:
        return {"mode": "off", "sets": []}, []
    from .near_duplicates import conflict, report_section

    result = check.result
    names = [picture_name(e) for e in entries]
    alone_of = dict(zip(names, alone or [e.split for e in entries], strict=True))
    final_of = {n: e.split for n, e in zip(names, entries, strict=True)}
    label_of = {n: e.file for n, e in zip(names, entries, strict=True)}
    out = report_section(result, check.mode, check.pictures, alone_of, final_of)  # type: ignore[arg-type]
    moved = sum(alone_of[n] != final_of[n] for n in names)
    out |= {"merged_groups": dict(sorted(check.merged.items())), "images_moved": moved}
    for name, why in sorted(result.unreadable.items()):
        problems.append(
            Problem(
                label_of[name],
                None,
                UNREADABLE_KIND,
                f"its pixels cannot be decoded ({why}); left out of the near-duplicate check. The header "
                "reads, so the image is in the datasets, but the trainer will fail on it: fix or remove it",
            )
        )
    annotation = {p.name: p.annotation for p in check.pictures}
    for twin_set in result.sets:
        first = twin_set.members[0]
        for member in twin_set.members[1:]:
            why = conflict(annotation[first], annotation[member])
            if why is None:
                continue
            problems.append(
                Problem(
                    label_of[member],
                    None,
                    CONFLICT_KIND,
                    f"the same picture as {label_of[first]} (a near-duplicate set: Hamming distance "
                    f"{twin_set.distance_min}-{twin_set.distance_max}, r >= {twin_set.correlation_min}) "
                    f"but annotated differently ({why}): {_describe(annotation[member])} here, "
                    f"{_describe(annotation[first])} there; splits {final_of[member]} and {final_of[first]}",
                )
            )
    warns = []
    if out["sets_split_now"]:
        warns.append(
            f"{out['sets_split_now']} near-duplicate set(s) span splits (near_duplicates: {check.mode}): the "
            "same picture is in more than one of train, val and test, which inflates the test figures; they "
            "are listed in prepare_report.json -> near_duplicates (set near_duplicates: group to keep each "
            "set in one split)"
        )
    if moved:
        joined = len(set(check.merged.values()))
        warns.append(
            f"near_duplicates: group joined {len(check.merged)} folder group(s) into {joined} so that "
            f"{out['sets_across_splits']} near-duplicate set(s) stay in one split; {moved} image(s) are in "
            "another split than their folder alone would give (adding pictures can move others this way)"
        )
    if out["label_conflicts"]:
        warns.append(
            f"{out['label_conflicts']} near-duplicate set(s) are annotated differently (problems "
            f"{CONFLICT_KIND}): the copies' annotations disagree, so at least one of them is wrong"
        )
    return out, warns
