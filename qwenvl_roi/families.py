"""The Qwen-VL model families qwenvl-roi supports: one table that every part reads.

A family is what the converters, the plugin, the tiny models, the recipes and inference must agree on for a
generation of Qwen-VL checkpoints: the pixel grid the vision tower sees, the released processor's pixel
limits, how box coordinates are written in the prompt (and how the prompt words it), LLaMA-Factory's
template and thinking setting, the text that ends the assistant turn, the module names of the vision tower,
its blocks and its projector, and the shape of a random-weight tiny model. Adding a family is one entry in
:data:`FAMILIES` plus its recipes under ``recipes/<name>/``.

Facts behind the entries (transformers 5.6, LLaMA-Factory 0.9.5; docs/architecture.md "Model families"):

- Grid factor = patch size x spatial merge size: 14 x 2 = 28 for Qwen2-VL / Qwen2.5-VL, 16 x 2 = 32 for
  Qwen3-VL / Qwen3.5 (``vision_config.patch_size`` / ``spatial_merge_size`` of the released checkpoints).
- Coordinates: Qwen2.5-VL reads absolute pixels of the resized image; Qwen2-VL ints normalised to [0, 1000)
  (``int(v * 1000 / side)``, clamped to 999); Qwen3-VL and Qwen3.5 relative ints on 0..1000, ``round(v / side
  * 1000)`` clamped to [0, 1000]: QwenLM/Qwen3-VL ``qwen-vl-finetune/tools/process_bbox.ipynb``
  (``convert_to_qwen2vl_format``, recommended for Qwen3-VL by its maintainers in issue 1486) and ms-swift's
  ``norm1000`` (``swift/template/base.py`` ``normalize_bbox``: ``int(round(x / width * 1000))``; its Qwen3-VL
  and Qwen3.5 templates inherit ``norm_bbox = 'norm1000'``, Qwen2.5-VL's overrides it with ``'none'``).
- Templates: LLaMA-Factory's registry maps Qwen3-VL Instruct to ``qwen3_vl_nothink`` and Qwen3.5 to
  ``qwen3_5`` (a reasoning template). With ``enable_thinking: false`` it puts the empty think block at the end
  of the prompt, as Qwen3.5's own chat template does in non-thinking mode, and never into the trained answer.
- Projectors: ``visual.merger``; Qwen3-VL also ``visual.deepstack_merger_list.{i}``, mergers fed from
  intermediate vision blocks into the first language layers. LLaMA-Factory files these under the vision
  tower, ms-swift under the aligner; here they are projector (trained by ``roi_train_projector`` at
  ``roi_lr_projector``, kept unquantized under QLoRA like the merger, saved whole in the adapter).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

from qwenvl_roi.errors import UnknownFamilyError

# The family names, for pydantic fields and type checkers (tests check it lists exactly FAMILIES' keys).
ModelFamily = Literal["qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5"]

# The coordinate frames a prompt can write boxes in (the entries of FRAMES below).
CoordFrame = Literal["resized_pixels", "norm1000", "rel1000"]
COORD_FRAMES: tuple[str, ...] = get_args(CoordFrame)

# How converters/frames.py turns an original-pixel coordinate v on a side of length `side` into the frame:
# "pixels": v * frame side / side, rounded half up, clamped to [0, frame side] (needs the resized size);
# "floor":  int(v * scale / side) clamped to [0, high];
# "round":  round(v / side * scale) (Python's round: halves to even) clamped to [0, high].
FrameEncoder = Literal["pixels", "floor", "round"]

# Shape of the tiny models' vision config keys (transformers names them differently per generation):
# "qwen2": Qwen2VLVisionConfig (embed_dim, mlp_ratio); "qwen2_5": Qwen2_5_VLVisionConfig (window attention);
# "qwen3": Qwen3VLVisionConfig (also Qwen3.5's).
VisionSchema = Literal["qwen2", "qwen2_5", "qwen3"]


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Frame:
    """A coordinate frame, described once: the numbers converters/frames.py writes, the prompt's wording of
    them (``{coord_desc}``) and the plugin's words for them in a dataset/model mismatch error."""

    name: CoordFrame
    encoder: FrameEncoder
    scale: int | None  # side of the normalised grid (1000); None: pixels of the resized image
    high: int | None  # the largest coordinate written (clamp); None: the frame's own width / height
    words: str  # English, for messages
    prompt_words: Mapping[str, str]  # prompt_language ("zh" | "en") -> the prompt's {coord_desc}

    @property
    def needs_size(self) -> bool:
        """Whether coordinates depend on the resized image size (and so on the pixel limits)."""
        return self.encoder == "pixels"


FRAMES: Mapping[str, Frame] = MappingProxyType(
    {
        # absolute pixels of the image after LLaMA-Factory's resize and the processor's rounding to the grid
        # factor (Qwen2.5-VL)
        "resized_pixels": Frame(
            name="resized_pixels",
            encoder="pixels",
            scale=None,
            high=None,
            words="absolute pixels of the resized image",
            prompt_words=_frozen({"zh": "缩放后图像的像素坐标", "en": "pixels of the resized image"}),
        ),
        # ints normalised to [0, 1000), truncated (Qwen2-VL)
        "norm1000": Frame(
            name="norm1000",
            encoder="floor",
            scale=1000,
            high=999,
            words="coordinates normalised to 0-1000",
            prompt_words=_frozen({"zh": "归一化到 0-1000 的坐标", "en": "normalised to 0-1000"}),
        ),
        # relative ints on 0..1000, rounded (Qwen3-VL, Qwen3.5)
        "rel1000": Frame(
            name="rel1000",
            encoder="round",
            scale=1000,
            high=1000,
            words="relative coordinates on 0..1000",
            prompt_words=_frozen(
                {
                    "zh": "相对坐标：0-1000 的整数，按图像宽、高的千分比",
                    "en": "relative coordinates: integers 0-1000, thousandths of the image width and height",
                }
            ),
        ),
    }
)


@dataclass(frozen=True)
class TinyArch:
    """How ``qwenvl-roi tiny-model --arch <model_type>`` builds a random-weight model of one HF model_type.

    The shared sizes (hidden, layers, heads) come from the tiny model's size preset; these are the classes and
    the keys particular to the architecture. ``text`` / ``vision`` are extra config keys; the MoE sizes are
    in ``text``.
    """

    model_type: str
    config_class: str
    model_class: str
    processor_class: str
    video_processor_class: str
    tokenizer_class: str = "Qwen2Tokenizer"
    text: Mapping[str, Any] = field(default_factory=_frozen)
    vision: Mapping[str, Any] = field(default_factory=_frozen)
    hybrid_attention: bool = False  # Qwen3.5: GatedDeltaNet linear attention with every 4th layer full
    partial_rotary_factor: float = 1.0
    mrope_interleaved: bool = False
    deepstack: bool = False  # Qwen3-VL: deepstack_visual_indexes spread over the vision depth
    # Qwen3-VL adds deepstack merger i to the output of language layer i (visual positions only): with fewer
    # layers than mergers + 1, the last ones could never reach a text logit and would get no gradient.
    min_text_layers: int = 1


@dataclass(frozen=True)
class Family:
    """One model family: everything the parts of qwenvl-roi must agree on for its checkpoints."""

    name: str  # the family key: configs/data.yaml model_family, dataset_meta.json, roi_meta
    display_name: str
    model_types: tuple[str, ...]  # HF config.model_type values covered (MoE variants map to the same family)
    default_model: str  # the recipes' model_name_or_path
    # vision grid and the released processor's pixel limits (preprocessor_config.json)
    patch_size: int
    merge_size: int
    processor_min_pixels: int
    processor_max_pixels: int
    # how box coordinates are written in the prompt and worded (an entry of FRAMES)
    frame: Frame
    # LLaMA-Factory template, its thinking setting (None: not a reasoning template) and the turn end
    template: str
    enable_thinking: bool | None
    # the template's (and the released chat template's) system prompt when a conversation has none
    default_system: str | None
    end_of_turn: str  # the token that ends the assistant turn (also the last answer line's terminator)
    assistant_suffix: str  # what the template appends after the answer text
    # module names, as suffixes of full module names on dot boundaries (``model.visual.merger`` ends with
    # ``visual.merger``); projector_lists name ModuleLists whose every element is a projector module
    vision_tower: str
    vision_blocks: str
    projectors: tuple[str, ...]
    projector_lists: tuple[str, ...]
    # tiny models
    vision_schema: VisionSchema
    tiny: tuple[TinyArch, ...]
    added_tokens: tuple[str, ...]  # non-special added tokens of the released tokenizer the tiny one mirrors
    recipes_dir: str  # folder of the family's recipes, relative to the project root

    @property
    def grid_factor(self) -> int:
        """Side of one vision token in pixels: images are resized to multiples of it (28 or 32)."""
        return self.patch_size * self.merge_size

    @property
    def frame_needs_size(self) -> bool:
        """Whether prompt coordinates depend on the resized image size (and so on the pixel limits)."""
        return self.frame.needs_size

    @property
    def template_args(self) -> dict[str, Any]:
        """LLaMA-Factory DataArguments keys that select the template as the recipes do."""
        args: dict[str, Any] = {"template": self.template}
        if self.enable_thinking is not None:
            args["enable_thinking"] = self.enable_thinking
        return args

    @property
    def projector_patterns(self) -> tuple[str, ...]:
        """Every projector key, lists included (for bitsandbytes' llm_int8_skip_modules and docs)."""
        return self.projectors + self.projector_lists

    def tiny_arch(self, model_type: str) -> TinyArch:
        """The tiny-model spec of one of this family's model types."""
        for arch in self.tiny:
            if arch.model_type == model_type:
                return arch
        raise UnknownFamilyError(
            f"family {self.name!r} has no tiny model {model_type!r}; "
            f"it has {[a.model_type for a in self.tiny]}"
        )


# The released checkpoints' preprocessor_config.json, not transformers 5.6's class defaults: every family
# uses Qwen2VLImageProcessor, whose defaults (56*56 .. 28*28*1280 = 1003520, patch 14) the checkpoints
# override. Qwen2-VL / Qwen2.5-VL: min_pixels 56*56, max_pixels 28*28*16384.
_QWEN2_LIMITS = {"processor_min_pixels": 3136, "processor_max_pixels": 12845056}
# Qwen3-VL / Qwen3.5: size shortest_edge 256*256, longest_edge 4096*4096 (patch 16, merge 2).
_QWEN3_LIMITS = {"processor_min_pixels": 65536, "processor_max_pixels": 16777216}
_CHATML = {"end_of_turn": "<|im_end|>", "assistant_suffix": "<|im_end|>\n"}
_QWEN_VISION = {
    "vision_tower": "visual",
    "vision_blocks": "visual.blocks",
    "projectors": ("visual.merger",),
}

_THINK_TOKENS = ("<think>", "</think>")
_QWEN3_VL_TEXT_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
_QWEN3_5_TEXT = {
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
}
_QWEN3_5_TEXT_MOE = {**_QWEN3_VL_TEXT_MOE, "shared_expert_intermediate_size": 32}
_QWEN3_VISION = {"num_position_embeddings": 64}  # a perfect square (the position grid is interpolated)

FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        "qwen2_5_vl": Family(
            name="qwen2_5_vl",
            display_name="Qwen2.5-VL",
            model_types=("qwen2_5_vl",),
            default_model="Qwen/Qwen2.5-VL-7B-Instruct",
            patch_size=14,
            merge_size=2,
            **_QWEN2_LIMITS,
            frame=FRAMES["resized_pixels"],
            template="qwen2_vl",
            enable_thinking=None,
            default_system="You are a helpful assistant.",
            **_CHATML,
            **_QWEN_VISION,
            projector_lists=(),
            vision_schema="qwen2_5",
            added_tokens=(),
            tiny=(
                TinyArch(
                    model_type="qwen2_5_vl",
                    config_class="Qwen2_5_VLConfig",
                    model_class="Qwen2_5_VLForConditionalGeneration",
                    processor_class="Qwen2_5_VLProcessor",
                    video_processor_class="Qwen2VLVideoProcessor",
                ),
            ),
            recipes_dir="recipes",
        ),
        "qwen2_vl": Family(
            name="qwen2_vl",
            display_name="Qwen2-VL",
            model_types=("qwen2_vl",),
            default_model="Qwen/Qwen2-VL-7B-Instruct",
            patch_size=14,
            merge_size=2,
            **_QWEN2_LIMITS,
            frame=FRAMES["norm1000"],
            template="qwen2_vl",
            enable_thinking=None,
            default_system="You are a helpful assistant.",
            **_CHATML,
            **_QWEN_VISION,
            projector_lists=(),
            vision_schema="qwen2",
            added_tokens=(),
            tiny=(
                TinyArch(
                    model_type="qwen2_vl",
                    config_class="Qwen2VLConfig",
                    model_class="Qwen2VLForConditionalGeneration",
                    processor_class="Qwen2VLProcessor",
                    video_processor_class="Qwen2VLVideoProcessor",
                ),
            ),
            recipes_dir="recipes",
        ),
        "qwen3_vl": Family(
            name="qwen3_vl",
            display_name="Qwen3-VL",
            model_types=("qwen3_vl", "qwen3_vl_moe"),
            default_model="Qwen/Qwen3-VL-8B-Instruct",
            patch_size=16,
            merge_size=2,
            **_QWEN3_LIMITS,
            frame=FRAMES["rel1000"],
            template="qwen3_vl_nothink",
            enable_thinking=None,
            default_system=None,
            **_CHATML,
            **_QWEN_VISION,
            projector_lists=("visual.deepstack_merger_list",),
            vision_schema="qwen3",
            added_tokens=_THINK_TOKENS,
            tiny=(
                TinyArch(
                    model_type="qwen3_vl",
                    config_class="Qwen3VLConfig",
                    model_class="Qwen3VLForConditionalGeneration",
                    processor_class="Qwen3VLProcessor",
                    video_processor_class="Qwen3VLVideoProcessor",
                    vision=_frozen(_QWEN3_VISION),
                    mrope_interleaved=True,
                    deepstack=True,
                    min_text_layers=4,  # 3 deepstack mergers + 1
                ),
                TinyArch(
                    model_type="qwen3_vl_moe",
                    config_class="Qwen3VLMoeConfig",
                    model_class="Qwen3VLMoeForConditionalGeneration",
                    processor_class="Qwen3VLProcessor",
                    video_processor_class="Qwen3VLVideoProcessor",
                    text=_frozen(_QWEN3_VL_TEXT_MOE),
                    vision=_frozen(_QWEN3_VISION),
                    mrope_interleaved=True,
                    deepstack=True,
                    min_text_layers=4,  # 3 deepstack mergers + 1
                ),
            ),
            recipes_dir="recipes/qwen3_vl",
        ),
        "qwen3_5": Family(
            name="qwen3_5",
            display_name="Qwen3.5",
            model_types=("qwen3_5", "qwen3_5_moe"),
            default_model="Qwen/Qwen3.5-9B",
            patch_size=16,
            merge_size=2,
            **_QWEN3_LIMITS,
            frame=FRAMES["rel1000"],
            template="qwen3_5",
            enable_thinking=False,
            default_system=None,
            **_CHATML,
            **_QWEN_VISION,
            projector_lists=(),
            vision_schema="qwen3",
            added_tokens=_THINK_TOKENS,
            tiny=(
                TinyArch(
                    model_type="qwen3_5",
                    config_class="Qwen3_5Config",
                    model_class="Qwen3_5ForConditionalGeneration",
                    processor_class="Qwen3VLProcessor",
                    video_processor_class="Qwen3VLVideoProcessor",
                    tokenizer_class="Qwen3_5Tokenizer",
                    text=_frozen(_QWEN3_5_TEXT),
                    vision=_frozen(_QWEN3_VISION),
                    hybrid_attention=True,
                    partial_rotary_factor=0.25,
                    mrope_interleaved=True,
                ),
                TinyArch(
                    model_type="qwen3_5_moe",
                    config_class="Qwen3_5MoeConfig",
                    model_class="Qwen3_5MoeForConditionalGeneration",
                    processor_class="Qwen3VLProcessor",
                    video_processor_class="Qwen3VLVideoProcessor",
                    tokenizer_class="Qwen3_5Tokenizer",
                    text=_frozen({**_QWEN3_5_TEXT, **_QWEN3_5_TEXT_MOE}),
                    vision=_frozen(_QWEN3_VISION),
                    hybrid_attention=True,
                    partial_rotary_factor=0.25,
                    mrope_interleaved=True,
                ),
            ),
            recipes_dir="recipes/qwen3_5",
        ),
    }
)

FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)
# the family everything uses when none is given (configs/data.yaml model_family, dataset_meta.json, demo)
DEFAULT_FAMILY: ModelFamily = "qwen2_5_vl"
# its first tiny-model architecture: the default `--arch` of `qwenvl-roi tiny-model` and `qwenvl-roi demo`
DEFAULT_TINY_ARCH: str = FAMILIES[DEFAULT_FAMILY].tiny[0].model_type
# model_type -> family name, for every model type a family covers
MODEL_TYPES: Mapping[str, str] = MappingProxyType(
    {model_type: fam.name for fam in FAMILIES.values() for model_type in fam.model_types}
)
# tiny-model architectures (`qwenvl-roi tiny-model --arch`): every model type with a tiny spec
TINY_ARCHES: tuple[str, ...] = tuple(arch.model_type for fam in FAMILIES.values() for arch in fam.tiny)


def family(name: str) -> Family:
    """The family called ``name`` (a configs/data.yaml ``model_family`` value)."""
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        hint = ""
        if isinstance(name, str) and name in MODEL_TYPES:
            hint = f" ({name!r} is a model_type of family {MODEL_TYPES[name]!r}: use that)"
        raise UnknownFamilyError(
            f"unknown model family {name!r}{hint}; known families: {', '.join(FAMILY_NAMES)}"
        ) from None


PROCESSOR_LIMITS = ("processor_min_pixels", "processor_max_pixels")


def with_processor_defaults(data: object, null_is_unset: bool) -> object:
    """Settings (a dict about to be validated) with the processor pixel limits they leave out taken from
    their ``model_family``'s released processor; with ``null_is_unset`` a null limit too. Anything else
    (not a dict, an unknown family: its own validation names it) is returned as it is."""
    if not isinstance(data, dict):
        return data
    name = data.get("model_family", DEFAULT_FAMILY)
    fam = FAMILIES.get(name) if isinstance(name, str) else None
    if fam is None:
        return data
    unset = (lambda k: data.get(k) is None) if null_is_unset else (lambda k: k not in data)
    return {**data, **{k: getattr(fam, k) for k in PROCESSOR_LIMITS if unset(k)}}


def find_family(model_type: str | None) -> Family | None:
    """The family covering an HF ``config.model_type`` (MoE variants included), or None."""
    name = MODEL_TYPES.get(model_type or "")
    return FAMILIES[name] if name is not None else None


def family_of_model_type(model_type: str | None) -> Family:
    """The family covering an HF ``config.model_type``; UnknownFamilyError names the supported ones."""
    fam = find_family(model_type)
    if fam is None:
        known = "; ".join(f"{f.name}: {', '.join(f.model_types)}" for f in FAMILIES.values())
        raise UnknownFamilyError(
            f"model_type {model_type!r} (config.json) is not in a model family qwenvl-roi supports ({known})"
        )
    return fam


def tiny_arch(arch: str) -> tuple[Family, TinyArch]:
    """(family, tiny spec) of a ``qwenvl-roi tiny-model --arch`` value (an HF model_type)."""
    fam = find_family(arch)
    if fam is None or arch not in TINY_ARCHES:
        raise UnknownFamilyError(f"tiny-model arch must be one of {', '.join(TINY_ARCHES)}; got {arch!r}")
    return fam, fam.tiny_arch(arch)
