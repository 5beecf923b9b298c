"""Exact trainable sets and optimizer-group learning rates, for every model family and every phase.

The recipes in recipes/ are parsed by LLaMA-Factory's own get_train_args in a fresh interpreter (so the
.pth hook patches it), the model is loaded by LLaMA-Factory's load_model, and the optimizer comes from
its create_custom_optimizer. Expected names are derived here from the plain transformers model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("trainable_probe.py")
WEIGHT_DECAY = 0.01


def _recipe(lf, name: str, model: Path, data: Path, out: Path, **overrides: object) -> dict:
    fixed = {"weight_decay": WEIGHT_DECAY, "preprocessing_num_workers": 1}
    case = lf.recipe_case(name, model, data, out, **{**fixed, **overrides})
    return {k: v for k, v in case.items() if v is not None or k == "resume_from_checkpoint"}


def _probe(lf, cases: list[dict], tmp: Path, plugin: bool = True) -> list[dict]:
    return lf.run_probe(PROBE, cases, tmp, env=lf.env(tmp, QWENVL_ROI_PLUGIN="1" if plugin else "0"))


class Expected:
    """Trainable names the phases must produce, from the base model's own modules."""

    def __init__(self, model_path: Path) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(model_path)
        self.depth = model.config.vision_config.depth
        self.params = {n: p.ndim for n, p in model.named_parameters()}
        self.linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        # the projector: the merger, and Qwen3-VL's deepstack mergers (one per deepstack_visual_indexes entry)
        deepstack = getattr(model.model.visual, "deepstack_merger_list", [])
        self.projectors = ["model.visual.merger."]
        self.projectors += [f"model.visual.deepstack_merger_list.{i}." for i in range(len(deepstack))]

    def lora(self, prefix: str) -> set[str]:
        return {
            f"base_model.model.{n}.lora_{ab}.default.weight"
            for n in self.linears
            if n.startswith(prefix)
            for ab in "AB"
        }

    def saved(self, prefix: str) -> dict[str, int]:
        """modules_to_save copies of every parameter under a module, with their ndim."""
        module = prefix.rstrip(".")
        return {
            f"base_model.model.{module}.modules_to_save.default.{n[len(prefix) :]}": nd
            for n, nd in self.params.items()
            if n.startswith(prefix)
        }


def _no_decay(name: str, ndim: int) -> bool:
    return ndim < 2 or name.endswith(".bias") or "norm" in name


def _expected_groups(
    exp: Expected, phase: int, lrs: dict[str, float], extra_language: dict[str, int]
) -> dict:
    """name -> (lr, weight decay) for a phase of the recipes (top blocks per the overrides below)."""
    out: dict[str, tuple[float, float]] = {}
    for name in exp.lora("model.language_model.layers."):
        out[name] = (lrs["language"], WEIGHT_DECAY)
    for name, nd in extra_language.items():
        out[name] = (lrs["language"], 0.0 if _no_decay(name, nd) else WEIGHT_DECAY)
    for projector in exp.projectors:
        for name, nd in exp.saved(projector).items():
            out[name] = (lrs["projector"], 0.0 if _no_decay(name, nd) else WEIGHT_DECAY)
    top = exp.depth - 1
    if phase == 2:
        for i in (top - 1, top):
            for name in exp.lora(f"model.visual.blocks.{i}."):
                out[name] = (lrs["vision_lora"], WEIGHT_DECAY)
    if phase == 3:
        for i in (top - 2, top - 1):
            for name in exp.lora(f"model.visual.blocks.{i}."):
                out[name] = (lrs["vision_lora"], WEIGHT_DECAY)
        for name, nd in exp.saved(f"model.visual.blocks.{top}.").items():
            out[name] = (lrs["vision_unfrozen"], 0.0 if _no_decay(name, nd) else WEIGHT_DECAY)
    return out


PHASE_OVERRIDES = {
    1: {},
    2: {"roi_vision_lora_top_blocks": 2},
    3: {"roi_vision_lora_top_blocks": 3, "roi_vision_unfreeze_top_blocks": 1},
}
RECIPE_LRS = {"language": 1e-4, "projector": 2e-4, "vision_lora": 5e-5, "vision_unfrozen": 1e-5}


# family -> its recipes folder (recipes/phase*.yaml are the Qwen2.5-VL-7B ones, also run on Qwen2-VL)
RECIPE_DIRS = {"qwen2_5_vl": "", "qwen2_vl": "", "qwen3_vl": "qwen3_vl/", "qwen3_5": "qwen3_5/"}


@pytest.mark.parametrize("family", list(RECIPE_DIRS))
def test_exact_trainable_sets_and_group_lrs(family: str, request, lf, family_dataset, tmp_path: Path) -> None:
    model = request.getfixturevalue(f"tiny_{family}")
    roi_dataset = family_dataset(family)  # roi_meta names the model's family
    recipes = RECIPE_DIRS[family]
    exp = Expected(model)
    if family == "qwen3_vl":
        assert len(exp.projectors) == 4  # merger + 3 deepstack mergers in the tiny model
    cases, expected = [], []
    for phase, overrides in PHASE_OVERRIDES.items():
        cases.append(
            _recipe(
                lf, f"{recipes}phase{phase}.yaml", model, roi_dataset, tmp_path / f"p{phase}", **overrides
            )
        )
        expected.append(_expected_groups(exp, phase, RECIPE_LRS, {}))
    # lm_head as an extra saved module (the demo trains it) lands in the language group
    lm_head = {"base_model.model.lm_head.modules_to_save.default.weight": 2}
    cases.append(
        _recipe(
            lf, f"{recipes}phase1.yaml", model, roi_dataset, tmp_path / "p1h", additional_target="lm_head"
        )
    )
    expected.append(_expected_groups(exp, 1, RECIPE_LRS, lm_head))
    # unset roi_lr_* default to learning_rate
    defaults = {
        k: None
        for k in ("roi_lr_language", "roi_lr_projector", "roi_lr_vision_lora", "roi_lr_vision_unfrozen")
    }
    cases.append(
        _recipe(
            lf,
            f"{recipes}phase3.yaml",
            model,
            roi_dataset,
            tmp_path / "p3d",
            learning_rate=3e-4,
            **defaults,
            **PHASE_OVERRIDES[3],
        )
    )
    expected.append(_expected_groups(exp, 3, dict.fromkeys(RECIPE_LRS, 3e-4), {}))

    results = _probe(lf, cases, tmp_path)
    for case, want, got in zip(cases, expected, results, strict=True):
        label = f"{family} {case['output_dir']}"
        assert set(got["trainable"]) == set(want), label
        assert got["groups"] is not None, label
        seen: list[str] = []
        for group in got["groups"]:
            assert group["names"], label
            for name in group["names"]:
                assert want[name] == (pytest.approx(group["lr"]), pytest.approx(group["weight_decay"])), name
            seen.extend(group["names"])
        assert sorted(seen) == sorted(want), label
        table = json.loads((Path(case["output_dir"]) / "trainable_params.json").read_text())
        assert table["total_tensors"] == len(want)
        assert table["vision_depth"] == exp.depth


def test_no_roi_keys_is_stock(tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path) -> None:
    """Without roi_ keys the plugin changes nothing: same trainable set, LLaMA-Factory's default optimizer."""
    case = _recipe(lf, "phase1.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path / "out")
    case = {k: v for k, v in case.items() if not k.startswith("roi_")}
    case["overwrite_output_dir"] = True
    with_plugin = _probe(lf, [case], tmp_path / "on")[0]
    stock = _probe(lf, [case], tmp_path / "off", plugin=False)[0]
    assert with_plugin == stock
    assert stock["groups"] is None  # no custom optimizer: HF Trainer's default
    assert set(stock["trainable"]) == Expected(tiny_qwen2_5_vl).lora("model.language_model.layers.")
    assert not (tmp_path / "out" / "trainable_params.json").exists()


def test_clear_errors_before_training(tiny_qwen2_5_vl: Path, lf, roi_dataset: Path, tmp_path: Path) -> None:
    """Misspelt roi_ key, unknown stock key, more blocks than the model has, data built for other limits,
    and what a break-it review found trained something else than the recipe says or failed only after the
    model loaded (each refused now while the arguments are parsed, before the tokenizer or model loads):
    a resumed adapter (its own modules, so no vision LoRA), another family's template, a learning rate of
    `true`, LoRA blocks all unfrozen, a text-only model, a resumed run started with other roi_ settings."""
    phase2 = {"roi_vision_lora_top_blocks": 2}
    text_model = tmp_path / "qwen2-text"  # a config is all the checks read
    text_model.mkdir()
    (text_model / "config.json").write_text('{"model_type": "qwen2"}', encoding="utf-8")
    gptq = tmp_path / "gptq-base"  # a checkpoint quantized already: LLaMA-Factory cannot merge into it
    gptq.mkdir()
    config = json.loads((tiny_qwen2_5_vl / "config.json").read_text(encoding="utf-8"))
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (gptq / "config.json").write_text(json.dumps(config), encoding="utf-8")
    resumed = tmp_path / "resumed"  # a run started with roi_lr_vision_lora 5e-5, stopped at step 2
    (resumed / "checkpoint-2").mkdir(parents=True)
    table = {"settings": {"roi_vision_lora_top_blocks": 2, "roi_lr_vision_lora": 5e-5}}
    (resumed / "trainable_params.json").write_text(json.dumps(table), encoding="utf-8")
    cases = [
        ({"roi_vison_lora_top_blocks": 2}, "did you mean 'roi_vision_lora_top_blocks'"),
        ({"lora_rnak": 2}, "lora_rnak"),  # LLaMA-Factory's own unknown-key check is still on
        ({}, "asked for the top 8 vision blocks but qwen2_5_vl's vision tower has 4 blocks"),  # recipe: top 8
        (
            {**phase2, "image_max_pixels": 589824},
            "built with image_max_pixels=1048576 but the recipe trains with 589824",
        ),
        ({**phase2, "finetuning_type": "full"}, "need finetuning_type: lora (got 'full')"),
        ({**phase2, "roi_lr_vision_unfrozen": 1e-5}, "roi_lr_vision_unfrozen is set but nothing uses it"),
        ({**phase2, "loraplus_lr_ratio": 16.0}, "remove loraplus_lr_ratio"),
        ({**phase2, "adapter_name_or_path": str(tmp_path)}, "choose the modules of a new adapter"),
        (
            {
                **phase2,
                "adapter_name_or_path": str(tmp_path),
                "create_new_adapter": True,
                "model_name_or_path": str(gptq),
            },
            "LLaMA-Factory cannot merge it into this model",
        ),
        ({**phase2, "template": "qwen3_vl_nothink"}, "is not qwen2_5_vl's template 'qwen2_vl'"),
        ({**phase2, "roi_lr_projector": True}, "a learning rate is a number, not true/false"),
        ({**phase2, "roi_vision_unfreeze_top_blocks": 2}, "no block gets LoRA"),
        ({**phase2, "model_name_or_path": str(text_model)}, "'qwen2' is not a vision-language model"),
        (
            {**phase2, "output_dir": str(resumed), "roi_lr_vision_lora": 1e-4},
            "roi_lr_vision_lora 5e-05 -> 0.0001",
        ),
    ]
    full = {"finetuning_type": "full", "roi_train_projector": False}  # phase 1 in full tuning
    phase1_cases = [
        (full, "roi_lr_projector is set but nothing uses it: it needs freeze_multi_modal_projector: false"),
    ]
    recipes = []
    for i, (overrides, _) in enumerate(cases):
        case = _recipe(lf, "phase2.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path / str(i), **overrides)
        case.pop("overwrite_output_dir", None)  # the resumed run's: as the recipes (false)
        recipes.append(case)
    for i, (overrides, _) in enumerate(phase1_cases):
        recipes.append(
            _recipe(lf, "phase1.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path / f"p1-{i}", **overrides)
        )
    # LLaMA-Factory's own LoRA on the whole tower (freeze_vision_tower: false) is the vision_lora group: its
    # rate can be set (before: refused as needing roi_vision_lora_top_blocks)
    stock = {"freeze_vision_tower": False, "roi_lr_vision_lora": 5e-5}
    recipes.append(_recipe(lf, "phase1.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path / "stock", **stock))
    *refused, tower = _probe(lf, recipes, tmp_path)
    for (overrides, message), result in zip(cases + phase1_cases, refused, strict=True):
        assert message in result.get("error", ""), (overrides, result.get("error"))
        assert result["stage"] == "parse", (overrides, result)
    assert "error" not in tower, tower.get("error")
    (vision,) = [g for g in tower["groups"] if any(".visual.blocks." in n for n in g["names"])]
    assert vision["lr"] == 5e-5 and all(".visual.blocks." in n and "lora_" in n for n in vision["names"])
