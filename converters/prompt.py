"""The ONLY place prompt and answer text is built (training and inference) and parsed back.

Answer format (line-based, one forward pass scores every region)::

    <image key>: <normal word | abnormal word>
    R1: <normal word | canonical label>
    R2: ...
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np

from qwenvl_roi.fileio import split_lines

from .frames import boxes_to_frame, boxes_to_frame_many
from .meta import DatasetMeta

_LINE = re.compile(r"^\s*(?P<key>[^:：]+?)\s*[:：]\s*(?P<value>.*?)\s*$")


def _fill(template: str, meta: DatasetMeta) -> str:
    return _fill_cached(
        template,
        tuple(meta.labels),
        meta.label_sep,
        meta.normal_word,
        meta.abnormal_word,
        meta.image_key,
        meta.coord_desc,
    )


@lru_cache(maxsize=64)
def _fill_cached(
    template: str, labels: tuple[str, ...], sep: str, normal: str, abnormal: str, key: str, coord: str
) -> str:
    return template.format(
        labels=sep.join(labels), normal_word=normal, abnormal_word=abnormal, image_key=key, coord_desc=coord
    )


def system_text(meta: DatasetMeta) -> str:
    """The system prompt."""
    return _fill(meta.system_prompt, meta)


def framed_boxes(samples: Sequence[Mapping[str, Any]], meta: DatasetMeta) -> list[list[list[int]]]:
    """Every sample's region boxes in the model's coordinate frame, computed for all samples at once (the
    same integers regions_block computes for one sample: frames.boxes_to_frame_many)."""
    counts = [len(s["regions"]) for s in samples]
    if not sum(counts):
        return [[] for _ in samples]
    every = [r["box"] for s in samples for r in s["regions"]]
    if any(n != 4 for n in map(len, every)):  # as regions_block would refuse
        raise ValueError("a region box is not [x1, y1, x2, y2]")
    boxes = np.fromiter(chain.from_iterable(every), dtype=np.float64, count=4 * len(every)).reshape(-1, 4)
    shapes = [(int(s["width"]), int(s["height"])) for s in samples]
    sizes = np.repeat(np.array(shapes), counts, axis=0)
    frame_of = {wh: meta.frame_size_for_coords(*wh) for wh in set(shapes)}  # one per image shape
    frame_w = frame_h = None
    if any(frame_of.values()):  # the family's coordinates depend on the frame size
        frame_w, frame_h = np.repeat(np.array([frame_of[wh] for wh in shapes]), counts, axis=0).T
    rows = boxes_to_frame_many(boxes, sizes[:, 0], sizes[:, 1], meta.model_family, frame_w, frame_h).tolist()
    ends = np.cumsum(counts).tolist()
    return [rows[end - n : end] for n, end in zip(counts, ends, strict=True)]


def regions_block(
    sample: Mapping[str, Any], meta: DatasetMeta, framed: Sequence[Sequence[int]] | None = None
) -> str:
    """``<regions>`` block with every candidate's box in the model's coordinate frame (``framed``: those
    boxes already computed, see framed_boxes)."""
    regions = sample["regions"]
    if framed is None:
        w, h = int(sample["width"]), int(sample["height"])
        framed = boxes_to_frame(
            [r["box"] for r in regions], w, h, meta.model_family, meta.frame_size_for_coords(w, h)
        )
    lines = ["<regions>"]
    lines += [f"{r['id']}: [{b[0]}, {b[1]}, {b[2]}, {b[3]}]" for r, b in zip(regions, framed, strict=True)]
    lines.append("</regions>")
    return "\n".join(lines)


def user_text(
    sample: Mapping[str, Any], meta: DatasetMeta, framed: Sequence[Sequence[int]] | None = None
) -> str:
    """User turn of a region sample: one ``<image>``, the instruction, the ``<regions>`` block."""
    return f"<image>{_fill(meta.region_instruction, meta)}\n{regions_block(sample, meta, framed)}"


def image_user_text(meta: DatasetMeta) -> str:
    """User turn of an image-level sample: one ``<image>`` and the instruction asking for one verdict."""
    return f"<image>{_fill(meta.image_instruction, meta)}"


def gold_verdicts(sample: Mapping[str, Any], meta: DatasetMeta) -> list[str]:
    """Per region, in region order: its canonical label when positive, else the normal word."""
    normal = meta.normal_word
    return [r["label"] if r["positive"] else normal for r in sample["regions"]]


def image_line(meta: DatasetMeta, abnormal: bool) -> str:
    """The image-level answer line, e.g. ``图像: 异常``."""
    return f"{meta.image_key}: {meta.abnormal_word if abnormal else meta.normal_word}"


def image_verdict(sample: Mapping[str, Any], meta: DatasetMeta, verdicts: Sequence[str] | None = None) -> str:
    """Image-level word: abnormal when any region verdict is not normal (gold: any positive region)."""
    if verdicts is None:
        abnormal = bool(sample.get("positive_region_ids")) or sample.get("source") == "abnormal"
    else:
        abnormal = verdicts.count(meta.normal_word) != len(verdicts)  # any verdict not the normal word
    return meta.abnormal_word if abnormal else meta.normal_word


def answer_text(
    sample: Mapping[str, Any],
    meta: DatasetMeta,
    verdicts: Sequence[str] | None = None,
    image_abnormal: bool | None = None,
) -> str:
    """The assistant turn: image line, then ``R<n>: <verdict>`` for every region in order.

    ``image_abnormal=None`` derives the image line from the verdicts (training data); inference passes it
    explicitly to write the answer the model itself would write.
    """
    regions = sample["regions"]
    verdicts = gold_verdicts(sample, meta) if verdicts is None else list(verdicts)
    if len(verdicts) != len(regions):
        raise ValueError(f"{len(verdicts)} verdicts for {len(regions)} regions in {sample.get('sample_id')}")
    if image_abnormal is None:
        head = f"{meta.image_key}: {image_verdict(sample, meta, verdicts)}"
    else:
        head = image_line(meta, image_abnormal)
    return "\n".join([head, *[f"{r['id']}: {v}" for r, v in zip(regions, verdicts, strict=True)]])


def build_record(
    sample: Mapping[str, Any],
    meta: DatasetMeta,
    verdicts: Sequence[str] | None = None,
    framed: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """LLaMA-Factory sharegpt record for one regions_*.jsonl sample; ``verdicts=None`` = gold; ``framed``:
    its boxes in the model's frame when already computed (framed_boxes)."""
    answer = answer_text(sample, meta, verdicts)
    return {
        "messages": [
            {"role": "system", "content": system_text(meta)},
            {"role": "user", "content": user_text(sample, meta, framed)},
            {"role": "assistant", "content": answer},
        ],
        "images": [sample["image"]],
    }


def build_image_record(
    sample: Mapping[str, Any], meta: DatasetMeta, abnormal: bool | None = None
) -> dict[str, Any]:
    """Image-level sharegpt record: whole image, one verdict (``abnormal=None``: gold)."""
    if abnormal is None:
        abnormal = image_verdict(sample, meta) == meta.abnormal_word
    return {
        "messages": [
            {"role": "system", "content": system_text(meta)},
            {"role": "user", "content": image_user_text(meta)},
            {"role": "assistant", "content": image_line(meta, abnormal)},
        ],
        "images": [sample["image"]],
    }


@dataclass
class ParsedAnswer:
    """What parse_answer could read; ``unparsed`` lists every part it could not (it never guesses)."""

    image: str | None = None
    regions: dict[str, str] = field(default_factory=dict)
    unparsed: list[str] = field(default_factory=list)


def parse_answer(text: str, meta: DatasetMeta) -> ParsedAnswer:
    """Parse an answer back into the image verdict and per-region verdicts (normal word or a known label)."""
    out = ParsedAnswer()
    allowed = {meta.normal_word, *meta.labels}
    rid = re.compile(rf"^{re.escape(meta.region_id_prefix)}\d+$")
    for raw in split_lines(text):  # lines as image_line/answers write them: a label may hold U+2028
        if not raw.strip():
            continue
        m = _LINE.match(raw)
        if m is None:
            out.unparsed.append(raw)
            continue
        key, value = m.group("key"), m.group("value")
        if key == meta.image_key:
            if out.image is None and value in (meta.normal_word, meta.abnormal_word):
                out.image = value
            else:
                out.unparsed.append(raw)
        elif rid.match(key) and key not in out.regions and value in allowed:
            out.regions[key] = value
        else:
            out.unparsed.append(raw)
    return out
