"""Qwen3-VL and Qwen3.5 through the stock `llamafactory-cli`, with each family's recipes (recipes/<family>/).

Per family, the chain users run: phase 1 on the base, exported; phase 2 on that export, exported; phase 3 on
that export. Checked: the optimizer groups and their learning rates, that the projector group holds the merger
and (Qwen3-VL) every deepstack merger, that the adapter saves them whole and every export merges them, and
that the final export computes the same logits as base + adapter on a batch built by LLaMA-Factory's own
dataset pipeline and collator (which passes the positions these families need). One QLoRA phase 1 here and
the ZeRO-3 run in test_e2e.py (Qwen3-VL: the family whose projector differs) cover the rest; the Qwen2.5-VL
tests there cover what is family-independent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow

FAMILIES = ("qwen3_vl", "qwen3_5")
# The tiny models have 4 vision blocks: the recipes' top-8 / top-2 are scaled down to fit.
PHASE2 = {"roi_vision_lora_top_blocks": 2}
PHASE3 = {
    "roi_vision_lora_top_blocks": 3,
    "roi_vision_unfreeze_top_blocks": 1,
    "roi_lr_vision_unfrozen": 1e-2,
}
DEEPSTACK = [f"model.visual.deepstack_merger_list.{i}" for i in range(3)]  # the tiny Qwen3-VL has 3


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _groups(out: Path) -> dict[str, dict]:
    table = json.loads((out / "trainable_params.json").read_text())
    return {g["group"]: g for g in table["groups"]}


def _projectors(family: str) -> list[str]:
    """The projector modules of the tiny model, written out (not read from the family table)."""
    return ["model.visual.merger", *(DEEPSTACK if family == "qwen3_vl" else [])]


def _export(lf, recipe: str, base: Path, adapter: Path, out: Path) -> Path:
    overrides = {
        "model_name_or_path": str(base),
        "adapter_name_or_path": str(adapter),
        "export_dir": str(out),
        "infer_dtype": "float32",
    }
    _ok(lf.run_cli("export", lf.RECIPES / recipe, overrides, out.parent, env=lf.env(out.parent)))
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def chain(request, lf, family_dataset, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    family = request.param
    base = request.getfixturevalue(f"tiny_{family}")
    data = family_dataset(family)
    work = tmp_path_factory.mktemp(f"chain-{family}")
    _ok(lf.train(f"{family}/phase1.yaml", base, data, work / "p1"))
    merged1 = _export(lf, f"{family}/export_phase1.yaml", base, work / "p1" / "out", work / "merged1")
    _ok(lf.train(f"{family}/phase2.yaml", merged1, data, work / "p2", **PHASE2))
    merged2 = _export(lf, f"{family}/export_phase2.yaml", merged1, work / "p2" / "out", work / "merged2")
    _ok(lf.train(f"{family}/phase3.yaml", merged2, data, work / "p3", **PHASE3))
    return SimpleNamespace(
        family=family,
        base=base,
        data=data,
        work=work,
        out={1: work / "p1" / "out", 2: work / "p2" / "out", 3: work / "p3" / "out"},
        merged={1: merged1, 2: merged2},
    )


def test_phases_train_the_right_groups_at_their_rates(chain: SimpleNamespace) -> None:
    from safetensors.torch import load_file

    lrs = {"language": 1e-4, "projector": 2e-4, "vision_lora": 5e-5, "vision_unfrozen": 1e-2}
    expected_groups = {1: {"language", "projector"}, 2: {"language", "projector", "vision_lora"}}
    expected_groups[3] = expected_groups[2] | {"vision_unfrozen"}
    for phase, out in chain.out.items():
        groups = _groups(out)
        assert {k.split("/")[0] for k in groups} == expected_groups[phase], phase
        assert all(g["lr"] == lrs[k.split("/")[0]] for k, g in groups.items()), (phase, groups)
        projector_names = groups["projector"]["names"] + groups["projector/no_decay"]["names"]
        for module in _projectors(chain.family):
            assert any(f".{module}.modules_to_save." in n for n in projector_names), (phase, module)
        saved = set(json.loads((out / "adapter_config.json").read_text())["modules_to_save"])
        extra = {"model.visual.blocks.3"} if phase == 3 else set()
        assert saved == set(_projectors(chain.family)) | extra, phase
        weights = load_file(out / "adapter_model.safetensors")
        for module in _projectors(chain.family):
            assert any(k.startswith(f"base_model.model.{module}.") for k in weights), (phase, module)
        state = json.loads((out / "trainer_state.json").read_text())
        assert state["global_step"] == 3
    table = json.loads((chain.out[3] / "trainable_params.json").read_text())
    assert table["vision_lora_blocks"] == [1, 2] and table["vision_unfrozen_blocks"] == [3]


def test_every_export_merges_the_projectors(chain: SimpleNamespace) -> None:
    """Each phase trained the projector (deepstack mergers included) and its export carried it over."""
    from safetensors.torch import load_file

    def weights(folder: Path) -> dict:
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}

    before = weights(chain.base)
    for phase in (1, 2):
        after = weights(chain.merged[phase])
        for module in _projectors(chain.family):
            key = f"{module}.linear_fc1.weight"
            assert not after[key].equal(before[key]), (phase, key)
        assert after["model.visual.blocks.0.attn.qkv.weight"].equal(
            before["model.visual.blocks.0.attn.qkv.weight"]
        )
        before = after


def test_export_equals_base_plus_adapter(chain: SimpleNamespace, lf, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    family, base = chain.family, chain.merged[2]
    merged = _export(lf, f"{family}/export_phase3.yaml", base, chain.out[3], tmp_path / "merged3")
    batch = lf.training_batch(lf.RECIPES / family / "phase3.yaml", base, chain.data, tmp_path)
    assert "position_ids" in batch and batch["position_ids"].dim() == 3  # LLaMA-Factory's m-rope positions
    assert batch["pixel_values"].shape[0] > 0
    plain = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32).eval()
    base_logits = lf.forward_logits(plain, batch)
    with_adapter = PeftModel.from_pretrained(plain, chain.out[3]).eval()
    expected = lf.forward_logits(with_adapter, batch)
    got = lf.forward_logits(
        AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).eval(), batch
    )
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert not torch.allclose(got, base_logits, atol=1e-3)  # the adapter changed something


def test_qlora_phase1_keeps_every_projector_unquantized(
    lf, tiny_qwen3_vl: Path, family_dataset, tmp_path: Path
) -> None:
    proc = lf.train("qwen3_vl/phase1_qlora.yaml", tiny_qwen3_vl, family_dataset("qwen3_vl"), tmp_path)
    _ok(proc)
    assert "Quantizing model to 4 bit with bitsandbytes" in proc.stdout + proc.stderr
    groups = _groups(tmp_path / "out")
    projector_names = groups["projector"]["names"]
    for module in _projectors("qwen3_vl"):  # trained in full: 2-D weights, not packed 4-bit
        assert f"base_model.model.{module}.modules_to_save.default.linear_fc1.weight" in projector_names
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sorted(adapter["modules_to_save"]) == sorted(_projectors("qwen3_vl"))
    merged = _export(
        lf, "qwen3_vl/export_phase1_qlora.yaml", tiny_qwen3_vl, tmp_path / "out", tmp_path / "merged"
    )
    config = json.loads((merged / "config.json").read_text())
    assert "quantization_config" not in config
