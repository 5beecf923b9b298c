"""Every recipe under recipes/ is a valid LLaMA-Factory config, and each family's recipes chain together.

The tests in tests/plugin run the recipes on tiny models; these checks cover what a tiny run overrides: the
published model names, the paths that hand one phase's output to the next, and the template settings.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from qwenvl_roi.families import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ("phase1.yaml", "phase1_qlora.yaml", "phase2.yaml", "phase3.yaml")
EXPORT = ("export_phase1.yaml", "export_phase1_qlora.yaml", "export_phase2.yaml", "export_phase3.yaml")
# one family per recipes folder (Qwen2-VL runs the Qwen2.5-VL-7B recipes in recipes/ with its own model)
FOLDERS = {f.recipes_dir: f for f in reversed(list(FAMILIES.values()))}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _allowed_keys() -> set[str]:
    from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS
    from qwenvl_roi.plugin.settings import RoiSettings

    keys = {f.name for cls in (*_TRAIN_ARGS, *_INFER_ARGS) for f in dataclasses.fields(cls)}
    return keys | set(RoiSettings.model_fields)


def test_every_recipe_has_only_llamafactory_or_roi_keys() -> None:
    allowed = _allowed_keys()
    recipes = sorted(p for p in (ROOT / "recipes").rglob("*.yaml"))
    assert len(recipes) == len(FOLDERS) * (len(TRAIN) + len(EXPORT))
    for path in recipes:
        unknown = set(_load(path)) - allowed
        assert not unknown, f"{path.relative_to(ROOT)}: {sorted(unknown)}"


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_family_recipes_chain_and_use_the_family_template(folder: str) -> None:
    fam = FOLDERS[folder]
    r = {name: _load(ROOT / folder / name) for name in TRAIN + EXPORT}
    for name in TRAIN + EXPORT:
        for key, value in fam.template_args.items():
            assert r[name][key] == value, (folder, name, key)
        assert r[name].get("enable_thinking") in (None, False), (folder, name)  # no think block in answers
    base = fam.default_model
    assert r["phase1.yaml"]["model_name_or_path"] == r["phase1_qlora.yaml"]["model_name_or_path"] == base
    assert r["export_phase1.yaml"]["model_name_or_path"] == base
    assert r["export_phase1_qlora.yaml"]["model_name_or_path"] == base  # merged into the bf16 base
    assert "quantization_bit" not in r["export_phase1_qlora.yaml"]
    for n, prev in ((2, 1), (3, 2)):
        assert r[f"phase{n}.yaml"]["model_name_or_path"] == r[f"export_phase{prev}.yaml"]["export_dir"]
        assert r[f"export_phase{n}.yaml"]["model_name_or_path"] == r[f"phase{n}.yaml"]["model_name_or_path"]
    for n in ("1", "1_qlora", "2", "3"):
        assert r[f"export_phase{n}.yaml"]["adapter_name_or_path"] == r[f"phase{n}.yaml"]["output_dir"]
    assert r["export_phase1_qlora.yaml"]["export_dir"] == r["export_phase1.yaml"]["export_dir"]
    outputs = [r[name]["output_dir"] for name in TRAIN] + [r[name]["export_dir"] for name in EXPORT[1:]]
    assert len(set(outputs)) == len(outputs)  # no two steps write the same folder
    other = [f.recipes_dir for f in FOLDERS.values() if f is not fam]
    for name in TRAIN:  # roi_ settings are the same in every family: same keys, same values
        same = {k: v for k, v in r[name].items() if k.startswith("roi_")}
        for folder_b in other:
            assert same == {k: v for k, v in _load(ROOT / folder_b / name).items() if k.startswith("roi_")}
