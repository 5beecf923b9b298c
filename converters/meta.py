"""dataset_meta.json: everything needed to rebuild a prompt exactly, written beside the regions files.

Inference and the plugin load it (``load_dataset_meta``) so nobody has to repeat the pixel limits, the model
family or the prompt texts, and a mismatch with a training recipe can be caught. The model of the file,
``DatasetMeta``, is one of the file contracts in ``qwenvl_roi.schemas`` (re-exported here).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qwenvl_roi.errors import ConvertError
from qwenvl_roi.families import family
from qwenvl_roi.fileio import load_json_model
from qwenvl_roi.schemas.dataset_meta import META_VERSION, DatasetMeta

from .config import DataConfig

__all__ = [
    "DEFAULT_TEXTS",
    "META_FILE",
    "META_VERSION",
    "DatasetMeta",
    "build_meta",
    "check_meta",
    "load_dataset_meta",
]

META_FILE = "dataset_meta.json"

# Default texts per language. Templates are filled by prompt.py (str.format with named fields).
# The wording of the coordinate frame ({coord_desc}) is the family's frame's (qwenvl_roi/families.py FRAMES).
DEFAULT_TEXTS: dict[str, dict[str, str]] = {
    "zh": {
        "system": "你是工业表面缺陷检测助手。只依据图像像素作出判断。",
        "region_instruction": (
            "请检查这张工业表面图像。<regions> 中列出了若干候选区域，坐标格式为 [x1, y1, x2, y2]"
            "（{coord_desc}）。第一行判断整张图像：{image_key}: {normal_word} 或 {abnormal_word}；"
            "然后按顺序每个候选区域一行：编号: {normal_word} 或缺陷类别。可选缺陷类别：{labels}。"
        ),
        "image_instruction": (
            "请检查这张工业表面图像，判断整张图像是否存在缺陷。"
            "只回答一行：{image_key}: {normal_word} 或 {abnormal_word}。"
        ),
        "normal_word": "正常",
        "abnormal_word": "异常",
        "image_key": "图像",
        "label_sep": "、",
    },
    "en": {
        "system": "You are an industrial surface defect inspector. Judge only from the image pixels.",
        "region_instruction": (
            "Inspect this industrial surface image. <regions> lists candidate regions as [x1, y1, x2, y2] "
            "({coord_desc}). First line, the whole image: {image_key}: {normal_word} or {abnormal_word}; "
            "then one line per candidate in order: its id: {normal_word} or the defect type. "
            "Defect types: {labels}."
        ),
        "image_instruction": (
            "Inspect this industrial surface image and decide whether it shows any defect. "
            "Answer with one line: {image_key}: {normal_word} or {abnormal_word}."
        ),
        "normal_word": "normal",
        "abnormal_word": "abnormal",
        "image_key": "image",
        "label_sep": ", ",
    },
}


def build_meta(config: DataConfig, labels: Sequence[str], image_bit_depth: int | None = None) -> DatasetMeta:
    """Resolve the config's prompt overrides over the language defaults and check the words are usable."""
    d = DEFAULT_TEXTS[config.prompt_language]
    p = config.prompts
    meta = DatasetMeta(
        model_family=config.model_family,
        image_max_pixels=config.image_max_pixels,
        image_min_pixels=config.image_min_pixels,
        processor_min_pixels=config.processor_min_pixels,
        processor_max_pixels=config.processor_max_pixels,
        prompt_language=config.prompt_language,
        system_prompt=p.system if p.system is not None else d["system"],
        region_instruction=p.region_instruction
        if p.region_instruction is not None
        else d["region_instruction"],
        image_instruction=p.image_instruction if p.image_instruction is not None else d["image_instruction"],
        coord_desc=p.coord_desc
        if p.coord_desc is not None
        else family(config.model_family).frame.prompt_words[config.prompt_language],
        normal_word=p.normal_word if p.normal_word is not None else d["normal_word"],
        abnormal_word=p.abnormal_word if p.abnormal_word is not None else d["abnormal_word"],
        image_key=p.image_key if p.image_key is not None else d["image_key"],
        label_sep=d["label_sep"],
        labels=sorted(labels),
        dataset_prefix=config.dataset_prefix,
        max_boxes_per_image=config.max_boxes_per_image,
        image_bit_depth=image_bit_depth,
    )
    check_meta(meta)
    return meta


def check_meta(meta: DatasetMeta) -> None:
    """Refuse words that would make answers ambiguous to parse."""
    words = {
        "normal_word": meta.normal_word,
        "abnormal_word": meta.abnormal_word,
        "image_key": meta.image_key,
    }
    for name, w in words.items():
        if not w.strip() or "\n" in w or ":" in w or w != w.strip():
            raise ConvertError(
                f"prompts.{name} {w!r} must be non-empty, one line, without ':' or outer spaces"
            )
    texts = [meta.system_prompt, meta.region_instruction, meta.image_instruction, meta.coord_desc]
    for text in [*texts, *words.values(), *meta.labels]:
        for token in ("<image>", "<video>", "<audio>"):
            if token in text:
                raise ConvertError(
                    f"{token} must not appear in prompt texts, words or labels ({text[:60]!r}): "
                    "the converters place exactly one <image> per user turn"
                )
    if meta.normal_word == meta.abnormal_word:
        raise ConvertError("prompts.normal_word and prompts.abnormal_word must differ")
    for label in meta.labels:
        if label == meta.normal_word:
            raise ConvertError(
                f"canonical label {label!r} equals the normal word; map it to another name in label_map"
            )
        if "\n" in label or label != label.strip() or not label:
            raise ConvertError(f"canonical label {label!r} must be one non-empty line without outer spaces")
    for name in ("system_prompt", "region_instruction", "image_instruction"):
        try:
            getattr(meta, name).format(
                labels="", normal_word="", abnormal_word="", image_key="", coord_desc=""
            )
        except (KeyError, IndexError, ValueError) as exc:
            raise ConvertError(
                f"prompt text {name} has a bad placeholder ({exc}); allowed: {{labels}} {{normal_word}} "
                "{abnormal_word} {image_key} {coord_desc}; write {{ }} for literal braces"
            ) from exc


def load_dataset_meta(path_or_dir: str | Path) -> DatasetMeta:
    """Load dataset_meta.json given the file, its folder (out_dir) or a regions_*.jsonl file beside it."""
    p = Path(path_or_dir)
    if p.is_dir():
        p = p / META_FILE
    elif p.name != META_FILE and p.suffix in {".jsonl", ".json"}:
        p = p.parent / META_FILE
    not_found = f"{p}: dataset_meta.json not found (run `qwenvl-roi prepare` first)"
    return load_json_model(p, DatasetMeta, ConvertError, "dataset_meta.json", not_found)
