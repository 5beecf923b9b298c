"""Label canonicalisation: spelling variants that differ only by width, case or whitespace are one label.

Without a ``label_map`` the canonical spelling of a variant group is its most frequent (NFKC-folded,
whitespace-collapsed) spelling, ties broken by sort order, so results do not depend on file order.
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping

import yaml

from qwenvl_roi.errors import ConvertError


def display_form(label: str) -> str:
    """NFKC width folding and collapsed whitespace, case kept."""
    return " ".join(unicodedata.normalize("NFKC", label).split())


def label_key(label: str) -> str:
    """The identity of a label: display form, case-folded."""
    return display_form(label).casefold()


def auto_canonical(counts: Mapping[str, int]) -> dict[str, str]:
    """key -> canonical spelling, from raw label counts (most frequent display form wins, then sort order)."""
    by_key: dict[str, Counter[str]] = defaultdict(Counter)
    for raw, n in counts.items():
        by_key[label_key(raw)][display_form(raw)] += n
    return {k: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for k, c in by_key.items()}


class LabelResolver:
    """Maps raw labels to canonical ones using label_map first, then the automatic variant merging."""

    def __init__(self, label_map: Mapping[str, str], observed: Mapping[str, int]):
        self.map: dict[str, str] = {}
        for variant, canonical in label_map.items():
            canonical = display_form(str(canonical))
            if not canonical:
                raise ConvertError(f"label_map: {variant!r} maps to an empty label")
            for k in (label_key(str(variant)), label_key(canonical)):
                prev = self.map.get(k)
                if prev is not None and prev != canonical:
                    raise ConvertError(
                        f"label_map: {variant!r} -> {canonical!r} conflicts with another entry "
                        f"mapping the same spelling (ignoring width/case/whitespace) to {prev!r}"
                    )
                self.map[k] = canonical
        self.auto = auto_canonical(observed)
        self.has_map = bool(label_map)

    def resolve(self, raw: str) -> tuple[str, bool]:
        """(canonical label, whether label_map covered it)."""
        k = label_key(raw)
        if k in self.map:
            return self.map[k], True
        return self.auto.get(k, display_form(raw)), False


def scan_summary(label_boxes: Mapping[str, int], label_images: Mapping[str, set[str]]) -> dict[str, object]:
    """Per raw label and per merged label: boxes and images, plus a ready-to-paste ``label_map:`` block."""
    canon = auto_canonical(label_boxes)
    raw_rows = []
    variants: dict[str, list[str]] = defaultdict(list)
    boxes: Counter[str] = Counter()
    images: dict[str, set[str]] = defaultdict(set)
    for raw in sorted(label_boxes, key=lambda r: (-label_boxes[r], r)):
        c = canon[label_key(raw)]
        raw_rows.append(
            {"label": raw, "boxes": label_boxes[raw], "images": len(label_images[raw]), "canonical": c}
        )
        variants[c].append(raw)
        boxes[c] += label_boxes[raw]
        images[c] |= label_images[raw]
    merged = [
        {"label": c, "variants": sorted(variants[c]), "boxes": boxes[c], "images": len(images[c])}
        for c in sorted(variants, key=lambda c: (-boxes[c], c))
    ]
    mapping = {v: m["label"] for m in merged for v in m["variants"]}
    block = yaml.safe_dump(
        {"label_map": mapping}, allow_unicode=True, sort_keys=False, default_flow_style=False
    )
    return {"labels": raw_rows, "merged": merged, "label_map_yaml": block}


def count_labels(items: Iterable[tuple[str, str]]) -> tuple[Counter[str], dict[str, set[str]]]:
    """(raw label -> boxes, raw label -> image ids) from (raw label, image id) pairs, one pair per box."""
    boxes: Counter[str] = Counter()
    images: dict[str, set[str]] = defaultdict(set)
    for raw, image in items:
        boxes[raw] += 1
        images[raw].add(image)
    return boxes, images
