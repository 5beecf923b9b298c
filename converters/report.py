"""prepare_report.json pieces: box ledger, per-split per-label counts, and warnings a person should read."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .split import SPLITS


@dataclass
class BoxLedger:
    """Every box read is counted exactly once: kept, clipped (kept after a fix) or dropped with a reason."""

    kept: int = 0
    clipped: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def add(self, status: str, reason_kind: str = "") -> None:
        if status == "kept":
            self.kept += 1
        elif status == "clipped":
            self.clipped += 1
        else:
            self.dropped[reason_kind] += 1

    def as_dict(self) -> dict[str, Any]:
        dropped = sum(self.dropped.values())
        return {
            "read": self.kept + self.clipped + dropped,
            "kept": self.kept,
            "clipped": self.clipped,
            "dropped": dropped,
            "dropped_by_reason": dict(sorted(self.dropped.items())),
        }


def split_stats(samples: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per split: images, samples, groups (count and keys), abnormal/normal images, positive boxes and
    images per label."""
    images: dict[str, set[str]] = defaultdict(set)
    sources: dict[str, Counter[str]] = defaultdict(Counter)
    groups: dict[str, set[str]] = defaultdict(set)
    n_samples: Counter[str] = Counter()
    label_boxes: dict[str, Counter[str]] = defaultdict(Counter)
    label_images: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    counts: dict[str, dict[str, Counter[int]]] = defaultdict(lambda: defaultdict(Counter))
    for s in samples:
        sp = s["split"]
        n_samples[sp] += 1
        if s["image"] not in images[sp]:
            images[sp].add(s["image"])
            sources[sp][s["source"]] += 1
        groups[sp].add(s["group"])
        counts[sp][s["source"]][len(s["regions"])] += 1
        for r in s["regions"]:
            if r["positive"]:
                label_boxes[sp][r["label"]] += 1
                label_images[sp][r["label"]].add(s["image"])
    out: dict[str, dict[str, Any]] = {}
    for sp in SPLITS:
        out[sp] = {
            "images": len(images[sp]),
            "abnormal_images": sources[sp]["abnormal"],
            "normal_images": sources[sp]["normal"],
            "samples": n_samples[sp],
            "groups": len(groups[sp]),
            "group_keys": sorted(groups[sp]),
            "labels": {
                lab: {"boxes": label_boxes[sp][lab], "images": len(label_images[sp][lab])}
                for lab in sorted(label_boxes[sp])
            },
            "candidates_per_sample": {
                src: {str(k): v for k, v in sorted(counts[sp][src].items())} for src in ("abnormal", "normal")
            },
        }
    return out


def split_warnings(stats: Mapping[str, Mapping[str, Any]], labels: Iterable[str]) -> list[str]:
    """Warn when a split is empty or a label that exists is missing from val or test."""
    warnings: list[str] = []
    for sp in SPLITS:
        if stats[sp]["images"] == 0:
            warnings.append(f"split {sp!r} has no image")
    for lab in sorted(labels):
        for sp in ("val", "test"):
            if lab not in stats[sp]["labels"]:
                warnings.append(f"label {lab!r} is missing from {sp}")
    return warnings
