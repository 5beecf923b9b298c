"""The converters' configuration (configs/data.yaml), validated in one place with precise errors.

Keys keep the seed's names and meaning; everything added has a default so the seed's template still loads.
Relative paths are resolved against the current working directory (the seed runs commands from the
project root with ``--config configs/data.yaml``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from qwenvl_roi.errors import ConvertError, OutputError
from qwenvl_roi.families import DEFAULT_FAMILY, ModelFamily, family, with_processor_defaults

from .sources import FORMAT_KEYS, FORMATS, LAYOUT_KEYS, LAYOUTS, SOURCES

_DEFAULT = family(DEFAULT_FAMILY)  # the table's default family: its processor limits are the fields' defaults


def report_error(exc: ConvertError | OutputError) -> int:
    """Print a converter command's error the one way they all do; returns the command's exit code."""
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code


class PromptTexts(BaseModel):
    """Optional overrides of the prompt texts and words; unset fields take the language's defaults.

    Templates may use ``{labels}``, ``{normal_word}``, ``{abnormal_word}``, ``{image_key}`` and
    ``{coord_desc}``; write ``{{`` / ``}}`` for literal braces.
    """

    model_config = ConfigDict(extra="forbid")

    system: str | None = None
    region_instruction: str | None = None
    image_instruction: str | None = None
    coord_desc: str | None = None
    normal_word: str | None = None
    abnormal_word: str | None = None
    image_key: str | None = None


#: what a format-specific key holds, for the error that says it is missing
FORMAT_KEY_HELP = {
    "annotations_dir": "the folder of the annotation files, mirroring abnormal_dir's sub-folders",
    "yolo_names": "a classes.txt (one name a line) or an Ultralytics dataset YAML with names:",
    "coco_json": "the COCO file; its images' file_name are relative to abnormal_dir",
    "dataset_root": "the benchmark's folder (MVTec AD: the root or one category; VisA: the root)",
    "visa_split_csv": "the split file, relative to dataset_root (e.g. split_csv/2cls_highshot.csv)",
}
#: what a layout sets itself, for the error when a config sets it too
LAYOUT_SETS = {
    "abnormal_dir": "reads its images under dataset_root; remove abnormal_dir",
    "normal_dir": "holds its own normal images (MVTec AD good, VisA normal); remove normal_dir (or null)",
    "annotation_format": "reads its masks and labels itself; remove annotation_format",
    "split_by_parent": (
        "splits image by image (one folder holds a whole defect type); remove split_by_parent or set it "
        "to false"
    ),
}


class DataConfig(BaseModel):
    """Every key of configs/data.yaml with its default (see docs/converters.md for the meaning)."""

    model_config = ConfigDict(extra="forbid")

    # a benchmark's own layout (converters/sources/: mvtec, visa) instead of the folders and annotation
    # format below: it names the images, the masks, the labels and the splits itself (first: the keys
    # after it are checked against it)
    dataset_layout: str | None = None
    dataset_root: Path | None = Field(None, validate_default=True)
    visa_split_csv: Path | None = Field(None, validate_default=True)
    split_from: Literal["defect_types", "layout"] | None = Field(None, validate_default=True)

    # paths
    abnormal_dir: Path = Path("./data/abnormal_root")
    normal_dir: Path | None = Path("./data/normal_root")
    out_dir: Path = Path("./data/prepared")
    dataset_info_dir: Path = Path("dataset_info")
    dataset_prefix: str = "roi"

    # annotations (converters/sources/): the format, and where its files are
    annotation_format: str = "txt"
    annotations_dir: Path | None = Field(None, validate_default=True)
    yolo_names: Path | None = Field(None, validate_default=True)
    coco_json: Path | None = Field(None, validate_default=True)

    # split
    seed: int = 42
    train_ratio: float = Field(0.8, ge=0.0, le=1.0)
    val_ratio: float = Field(0.1, ge=0.0, le=1.0)
    test_ratio: float = Field(0.1, ge=0.0, le=1.0)
    split_by_parent: bool = True
    split_group_depth: int | None = Field(None, ge=1)
    holdout_list: list[str] = Field(default_factory=list)

    # candidates
    min_box_size: float = Field(24, ge=0)
    max_boxes_per_image: int = Field(8, ge=2)
    abnormal_neg_per_pos: int = Field(1, ge=0)
    normal_decoys_per_image: int = Field(6, ge=1)
    max_neg_iou: float = Field(0.1, ge=0.0, le=1.0)
    max_neg_cover: float = Field(0.1, ge=0.0, le=1.0)

    # images
    image_fixes: Literal["fix", "flag"] = "fix"
    image_bit_depth: int | None = Field(None, ge=8, le=32)

    # txt parsing
    column_delim: str = ";"
    inner_coord_delims: list[str] = Field(default_factory=lambda: ["；", ";", "，", ",", " "])
    coords_are_xyxy: bool = True
    label_map: dict[str, str] = Field(default_factory=dict)

    # model frame and prompts
    model_family: ModelFamily = DEFAULT_FAMILY
    image_max_pixels: int = Field(1048576, gt=0)
    image_min_pixels: int = Field(1024, gt=0)
    # unset: the family's released processor (qwenvl_roi/families.py), filled in by _family_defaults
    processor_min_pixels: int = Field(_DEFAULT.processor_min_pixels, gt=0)
    processor_max_pixels: int = Field(_DEFAULT.processor_max_pixels, gt=0)
    prompt_language: Literal["zh", "en"] = "zh"
    prompts: PromptTexts = Field(default_factory=PromptTexts)

    # near-duplicate pictures across splits (converters/near_duplicates.py; the defaults are its DEFAULT_*,
    # chosen on bench/near_duplicates.py's evidence and not imported here: loading a config stays cheap)
    near_duplicates: Literal["group", "report", "off"] = "report"
    near_duplicate_max_distance: int = 8
    near_duplicate_min_correlation: float = 0.9995
    workers: int | None = None  # processes that hash pictures (and decode layout masks); None: by the work

    # behaviour
    strict: bool = False

    @field_validator("column_delim")
    @classmethod
    def _delim_not_blank(cls, v: str) -> str:
        if not v or not v.strip():
            raise ValueError("column_delim must be a visible character such as ';'")
        return v

    @field_validator("inner_coord_delims")
    @classmethod
    def _inner_not_empty(cls, v: list[str]) -> list[str]:
        if any(d == "" for d in v):
            raise ValueError("inner_coord_delims must not contain an empty string")
        return v

    @field_validator("annotation_format")
    @classmethod
    def _format_known(cls, v: str) -> str:
        if v not in SOURCES:
            raise ValueError(f"{v!r} is not a format; one of {', '.join(FORMATS)}")
        return v

    @field_validator("dataset_layout")
    @classmethod
    def _layout_known(cls, v: str | None) -> str | None:
        if v is not None and v not in LAYOUTS:
            raise ValueError(f"{v!r} is not a layout; one of {', '.join(LAYOUTS)} (or null)")
        return v

    @field_validator(*LAYOUT_KEYS)
    @classmethod
    def _layout_key(cls, v: object, info: ValidationInfo) -> object:
        """A layout's required key must be set; a key only another layout (or no layout) reads must not be."""
        key = info.field_name or ""
        if "dataset_layout" not in info.data:  # its own error says why
            return v
        layout = info.data["dataset_layout"]
        readers = " or ".join(name for name, s in LAYOUTS.items() if key in s.keys)
        if layout is None:
            if v is not None:
                raise ValueError(f"is read only with dataset_layout: {readers}; remove it")
            return v
        source = LAYOUTS[layout]
        if v is None and key in source.required:
            raise ValueError(f"dataset_layout: {layout} needs {key}: {FORMAT_KEY_HELP.get(key, '')}")
        if v is not None and key not in source.keys:
            raise ValueError(
                f"is read only with dataset_layout: {readers} (this config has {layout}); remove it"
            )
        return v

    @field_validator(*LAYOUT_SETS)
    @classmethod
    def _not_with_layout(cls, v: object, info: ValidationInfo) -> object:
        """Keys a layout sets itself (checked only when written: these have defaults)."""
        layout = info.data.get("dataset_layout")
        key = info.field_name or ""
        if layout is None or (key in ("normal_dir", "split_by_parent") and not v):
            return v
        raise ValueError(f"dataset_layout: {layout} {LAYOUT_SETS[key]}")

    @field_validator(*FORMAT_KEYS)
    @classmethod
    def _format_key(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        """A format's required key must be set; a key another format reads must not be (it would be
        ignored silently)."""
        fmt = info.data.get("annotation_format")
        key = info.field_name or ""
        layout = info.data.get("dataset_layout")
        if layout is not None and v is not None:
            raise ValueError(f"is not read with dataset_layout: {layout} (it reads its masks); remove it")
        if fmt not in SOURCES:  # the format's own error says why
            return v
        source = SOURCES[fmt]
        if v is None and key in source.required:
            raise ValueError(f"annotation_format: {fmt} needs {key}: {FORMAT_KEY_HELP.get(key, '')}")
        if v is not None and key not in source.keys:
            readers = " or ".join(f for f, s in SOURCES.items() if key in s.keys)
            raise ValueError(
                f"is read only with annotation_format: {readers} (this config has {fmt}); remove it"
            )
        return v

    @field_validator("dataset_prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "_-" for c in v):
            raise ValueError("dataset_prefix must be letters, digits, '_' or '-'")
        return v

    @field_validator(
        "near_duplicate_max_distance", "near_duplicate_min_correlation", "workers", mode="before"
    )
    @classmethod
    def _not_bool(cls, v: object) -> object:
        if isinstance(v, bool):  # YAML's yes/no/on/off: a number was meant (pydantic reads true as 1)
            raise ValueError(f"must be a number, not {str(v).lower()}")
        return v

    @field_validator("near_duplicates", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        """YAML 1.1 reads an unquoted ``off`` (and ``no``, ``false``) as false: that is the mode off."""
        if v is False:
            return "off"
        if v is True:
            raise ValueError("true/on/yes says nothing about what to do: write group, report or off")
        return v

    @field_validator("near_duplicate_max_distance")
    @classmethod
    def _distance_ok(cls, v: int) -> int:
        if not 0 <= v <= 32:
            raise ValueError(
                f"must be 0..32 bits of the 64-bit pHash, got {v} (twins differ by 0-2 bits; two unrelated "
                "pictures by about 32, so a larger distance pairs everything)"
            )
        return v

    @field_validator("near_duplicate_min_correlation")
    @classmethod
    def _correlation_ok(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(
                f"must be a Pearson correlation in (0, 1], got {v:g} (twins reach 0.99994 and more; distinct "
                "pictures of one product stay below 0.9986)"
            )
        return v

    @field_validator("workers")
    @classmethod
    def _workers_ok(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(
                f"must be at least 1 process (or null: chosen by the work and the CPUs), got {v}"
            )
        return v

    @field_validator("label_map", mode="before")
    @classmethod
    def _label_map_none(cls, v: object) -> object:
        return {} if v is None else v

    @field_validator("holdout_list", mode="before")
    @classmethod
    def _holdout_none(cls, v: object) -> object:
        return [] if v is None else v

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: object) -> object:
        """Unset (or null) processor pixel limits default to the model family's released processor."""
        return with_processor_defaults(data, null_is_unset=True)

    @model_validator(mode="after")
    def _layout_folders(self) -> DataConfig:
        """A layout names its own folders: abnormal_dir is dataset_root (the images folder the preview and
        the report name), no normal_dir, and every image is its own split group (a benchmark's folder holds
        a whole defect type, and the layout forces splits image by image)."""
        if self.dataset_layout is not None and self.dataset_root is not None:
            self.abnormal_dir = self.dataset_root
            self.normal_dir = None
            self.split_by_parent = False
        return self

    @model_validator(mode="after")
    def _check_relations(self) -> DataConfig:
        total = self.train_ratio + self.val_ratio + self.test_ratio
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train_ratio + val_ratio + test_ratio must be 1.0, got {total:g}")
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels must not exceed image_max_pixels")
        if self.processor_min_pixels > self.processor_max_pixels:
            raise ValueError("processor_min_pixels must not exceed processor_max_pixels")
        if self.max_boxes_per_image < 1 + self.abnormal_neg_per_pos:
            raise ValueError(
                "max_boxes_per_image must be at least 1 + abnormal_neg_per_pos "
                "(one positive and its negatives must fit in one sample)"
            )
        if self.split_group_depth is not None and not self.split_by_parent:
            raise ValueError(
                "split_group_depth needs split_by_parent: true (with false every image is its own group)"
            )
        if self.normal_decoys_per_image > self.max_boxes_per_image:
            raise ValueError("normal_decoys_per_image must not exceed max_boxes_per_image")
        return self


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of every top-level key, so validation errors can point into the YAML file."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                lines[str(key_node.value)] = key_node.start_mark.line + 1
    return lines


def format_validation_error(err: ValidationError, source: str, key_lines: dict[str, int]) -> str:
    """One line per problem: ``file:line: key: message``."""
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        key = loc[0] if loc else ""
        line = key_lines.get(key)
        if line is None and key in FORMAT_KEYS:  # a missing key the format needs: point at the format
            line = key_lines.get("annotation_format")
        if line is None and key in LAYOUT_KEYS:  # likewise for a layout
            line = key_lines.get("dataset_layout")
        where = f"{source}:{line}" if line else source
        name = ".".join(loc) if loc else "(config)"
        out.append(f"{where}: {name}: {e['msg']}")
    return "\n".join(out)


def load_data_config(path: str | Path, overrides: dict | None = None) -> DataConfig:
    """Read and validate a data.yaml; raise ConvertError naming file, line and key on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConvertError(f"{path}: config is not UTF-8 text ({exc.reason})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConvertError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConvertError(f"{path}:1: the config must be a mapping of keys to values")
    data.update(overrides or {})
    try:
        return DataConfig.model_validate(data)
    except ValidationError as exc:
        raise ConvertError(format_validation_error(exc, str(path), _key_lines(text))) from exc


def coerce_config(config: DataConfig | str | Path | dict) -> DataConfig:
    """Accept a DataConfig, a path to data.yaml or a plain dict (the demo builds one in code)."""
    if isinstance(config, DataConfig):
        return config
    if isinstance(config, dict):
        try:
            return DataConfig.model_validate(config)
        except ValidationError as exc:
            raise ConvertError(format_validation_error(exc, "<config dict>", {})) from exc
    return load_data_config(config)
