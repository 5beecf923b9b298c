"""The family table against the installed libraries it describes: LLaMA-Factory's templates and
composite-model registry, transformers' configs and processors. An entry that drifts from them fails here."""

from __future__ import annotations

import typing

import pytest

from qwenvl_roi import families
from qwenvl_roi.errors import UnknownFamilyError
from qwenvl_roi.families import FAMILIES, FAMILY_NAMES, family, family_of_model_type


def test_model_family_literal_lists_exactly_the_table() -> None:
    assert typing.get_args(families.ModelFamily) == FAMILY_NAMES
    assert set(families.MODEL_TYPES) == {t for f in FAMILIES.values() for t in f.model_types}


def test_lookups_and_their_errors() -> None:
    assert family_of_model_type("qwen3_vl_moe") is family("qwen3_vl")
    assert family_of_model_type("qwen3_5_moe") is family("qwen3_5")
    assert family_of_model_type("qwen2_5_vl").name == "qwen2_5_vl"
    assert families.find_family("llava") is None and families.find_family(None) is None
    with pytest.raises(
        UnknownFamilyError, match=r"model_type 'llava' \(config.json\) is not in a model family"
    ):
        family_of_model_type("llava")
    with pytest.raises(UnknownFamilyError, match="qwen3_vl: qwen3_vl, qwen3_vl_moe"):
        family_of_model_type("llava")
    with pytest.raises(UnknownFamilyError, match="unknown model family 'qwen3'; known families: qwen2_5_vl"):
        family("qwen3")
    with pytest.raises(UnknownFamilyError, match="'qwen3_5_moe' is a model_type of family 'qwen3_5'"):
        family("qwen3_5_moe")
    with pytest.raises(UnknownFamilyError, match="tiny-model arch must be one of"):
        families.tiny_arch("qwen3")


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_grid_and_vision_names_match_transformers(name: str) -> None:
    """Grid factor = the real config's patch size x merge size; the table's module names exist in the model
    class transformers builds (meta device: no weights)."""
    import torch
    import transformers

    fam = family(name)
    for arch in fam.tiny:
        config_class = getattr(transformers, arch.config_class)
        vision = config_class().vision_config
        merge = getattr(vision, "spatial_merge_size", None) or vision.merge_size
        assert vision.patch_size * merge == fam.grid_factor, arch.model_type
        assert config_class.model_type == arch.model_type
        assert arch.model_type in fam.model_types
    with torch.device("meta"):
        cfg = getattr(transformers, fam.tiny[0].config_class)(
            vision_config={"depth": 2}, text_config={"num_hidden_layers": 1}
        )
        model = getattr(transformers, fam.tiny[0].model_class)(cfg)
    names = {n for n, _ in model.named_modules()}
    assert f"model.{fam.vision_blocks}" in names
    for key in fam.projectors + fam.projector_lists:
        assert f"model.{key}" in names, key


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_llamafactory_knows_the_projector_and_template(name: str) -> None:
    """LLaMA-Factory's projector keys are ours (ours may add the deepstack mergers); the template exists,
    ends the answer with our end-of-turn text, and is a reasoning template exactly when we set thinking."""
    from llamafactory.data.template import TEMPLATES, ReasoningTemplate
    from llamafactory.model.model_utils.visual import COMPOSITE_MODELS

    fam = family(name)
    for model_type in fam.model_types:
        for key in COMPOSITE_MODELS[model_type].projector_keys:
            assert any(key == p or key.endswith("." + p) for p in fam.projectors), (model_type, key)
    template = TEMPLATES[fam.template]
    assert template.format_assistant.apply(content="R1: normal") == ["R1: normal" + fam.assistant_suffix]
    assert fam.assistant_suffix.startswith(fam.end_of_turn)
    assert template.stop_words == [fam.end_of_turn] or fam.end_of_turn in template.format_assistant.slots[0]
    assert isinstance(template, ReasoningTemplate) == (fam.enable_thinking is not None)
    if fam.enable_thinking is not None:
        assert fam.enable_thinking is False  # thinking on would put an empty think block into every answer
    system = template.default_system or None
    assert system == fam.default_system
