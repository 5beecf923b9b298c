"""`qwenvl-roi webui-config`: every shipped training recipe, loaded into LLaMA-Factory's own web UI form
and turned into training arguments by its own runner, launches what the recipe says.

Reference: LLaMA-Factory's web UI code itself (no browser needed for the arguments): the Train tab's
components as ``create_top`` / ``create_train_tab`` build them, ``Runner.load_args`` reading the saved file
(what "Load arguments" calls), ``Runner._parse_train_args`` + ``_clean_cmd`` (what "Start" writes into the
launched training_args.yaml). Fails on the code before: the subcommand did not exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwenvl_roi.cli import main
from qwenvl_roi.webui_config import COMMA_LISTS, FIELDS, NOT_DEFAULTED, cli_defaults, true_by_default

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (REPO / "recipes").rglob("phase*.yaml"))
#: a web UI model name of each recipe folder's family (multimodal, so the form's image fields are used)
MODEL_NAME = {
    "recipes": "Qwen2.5-VL-7B-Instruct",
    "qwen3_vl": "Qwen3-VL-8B-Instruct",
    "qwen3_5": "Qwen3.5-9B-Base",
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The web UI's top bar and Train tab, built by LLaMA-Factory (gradio components, not rendered), in a
    scratch folder: the web UI keeps its user config in llamaboard_cache/ of the current folder."""
    import gradio as gr
    from llamafactory.webui.components import create_top, create_train_tab
    from llamafactory.webui.engine import Engine

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("webui-cwd"))
        eng = Engine(pure_chat=False)
        with gr.Blocks():
            eng.manager.add_elems("top", create_top())
            eng.manager.add_elems("train", create_train_tab(eng))
    return eng


def _launched(engine: Any, folder: Path, name: str, model_name: str) -> dict[str, Any]:
    """The arguments the web UI launches after "Load arguments" of the saved file ``name``."""
    from llamafactory.webui.common import _clean_cmd

    manager = engine.manager
    data = {elem: getattr(elem, "value", None) for _, elem in manager._id_to_elem.items()}
    data[manager.get_elem_by_id("top.model_name")] = model_name
    loaded = engine.runner.load_args("en", name)  # reads llamaboard_config/<name> under the cwd
    output_box = manager.get_elem_by_id("train.output_box")
    assert loaded[output_box] != "", loaded[output_box]
    for elem, value in loaded.items():
        if elem is not output_box:
            data[elem] = value
    return _clean_cmd(engine.runner._parse_train_args(data))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(REPO / "recipes").as_posix())
def test_recipe_launches_from_the_webui_as_written(
    recipe: Path, engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["webui-config", "--recipe", str(recipe)]) == 0
    name = f"roi_{recipe.stem}.yaml"
    saved = tmp_path / "llamaboard_config" / name
    assert saved.is_file() and f"type {name} in Config path" in capsys.readouterr().out
    extra = json.loads(yaml.safe_load(saved.read_text(encoding="utf-8"))["train.extra_args"])
    assert {k for k in extra if k.startswith("roi_")} == {
        k for k, v in yaml.safe_load(recipe.read_text(encoding="utf-8")).items() if k.startswith("roi_")
    }  # the form shows every roi_ key of the recipe (in Extra arguments)

    model_name = MODEL_NAME[recipe.parent.name]
    launched = _launched(engine, tmp_path, name, model_name)
    wanted = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    for key, value in wanted.items():
        if value is None:
            assert launched.get(key) is None, key
        elif key == "output_dir":  # the web UI's own folder: saves/<model name>/<method>/<name>
            want = Path("saves") / model_name / wanted["finetuning_type"] / Path(value).name
            assert Path(launched[key]) == want
        elif value is False and key not in launched:  # dropped from the launched YAML: the default applies
            assert key not in true_by_default(), f"{key}: false would become true in the web UI"
        elif key == "dataset":
            assert launched[key] == value
        elif isinstance(value, float):
            assert float(launched[key]) == pytest.approx(value), key
        else:
            assert launched[key] == value, key
    assert launched["stage"] == "sft" and launched["do_train"] is True


def test_refuses_to_replace_a_saved_configuration(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "llamaboard_config"
    folder.mkdir()
    mine = folder / "roi_phase1.yaml"
    mine.write_text("train.learning_rate: '1e-3'\n", encoding="utf-8")  # saved from the web UI
    recipe = str(REPO / "recipes" / "phase1.yaml")
    assert main(["webui-config", "--recipe", recipe, "--dir", str(folder)]) == 2
    assert "was not written by qwenvl-roi webui-config" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "train.learning_rate: '1e-3'\n"
    assert main(["webui-config", "--recipe", recipe, "--dir", str(folder), "--name", "other.yaml"]) == 0
    assert (
        main(["webui-config", "--recipe", recipe, "--dir", str(folder), "--name", "other.yaml"]) == 0
    )  # ours


def test_bad_recipe_keys_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: sft\nroi_eval_verdict: true\n", encoding="utf-8")
    assert main(["webui-config", "--recipe", str(bad), "--dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "roi_eval_verdict" in err and "did you mean 'roi_eval_verdicts'" in err
    assert not (tmp_path / "c").exists()


BASE = {
    "stage": "sft",
    "do_train": True,
    "model_name_or_path": "models/qwen2_5_vl",
    "template": "qwen2_vl",
    "dataset_dir": "dataset_info",
    "dataset": "roi_train",
    "finetuning_type": "lora",
    "output_dir": "saves/x/run",
    "bf16": True,
}
#: recipes users write (the red team's): every one must launch as llamafactory-cli train would run it
USER_RECIPES: dict[str, dict[str, Any]] = {
    "freeze": {
        "finetuning_type": "freeze",
        "freeze_trainable_layers": 4,
        "freeze_trainable_modules": "q_proj,v_proj",
        "freeze_extra_modules": "embed_tokens",
    },
    "lora_options": {
        "use_rslora": True,
        "use_dora": True,
        "loraplus_lr_ratio": 16.0,
        "additional_target": "lm_head",
        "create_new_adapter": True,
    },
    "quantized_video": {"quantization_bit": 4, "video_max_pixels": 100000, "video_min_pixels": 1024},
    "lists": {
        "dataset": ["roi_train", "roi_extra"],
        "lora_target": ["q_proj", "v_proj"],
        "report_to": ["tensorboard", "wandb"],
    },
    "ratio_steps": {"save_steps": 0.25, "logging_steps": 0.01},
    "off_the_slider_grid": {"save_steps": 25, "logging_steps": 10, "per_device_train_batch_size": 2048},
    "null_and_left_out": {"max_samples": None, "lora_rank": 64},  # lora_alpha left out: 2 x rank
    "full": {"finetuning_type": "full", "deepspeed": "recipes/deepspeed/ds_z3.json", "val_size": 0.1},
}
_LORA = ("lora_rank", "lora_alpha", "lora_dropout", "loraplus_lr_ratio", "create_new_adapter", "use_rslora")
_LORA += ("use_dora", "pissa_init", "lora_target", "additional_target")
#: the arguments the runner emits only for some methods
ONLY_FOR = {
    **dict.fromkeys(_LORA, "lora"),
    **dict.fromkeys(
        ("freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules"), "freeze"
    ),
}


def _as_cli_reads(key: str, value: Any) -> Any:
    """A value as LLaMA-Factory reads it: comma text and lists alike (split_arg), null/false/"" as absent."""
    if value in (None, False, ""):
        return None
    if key in COMMA_LISTS:
        return [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if isinstance(value, float) or key in ("learning_rate", "num_train_epochs", "max_grad_norm"):
        return pytest.approx(float(value))
    return value


@pytest.mark.parametrize("case", sorted(USER_RECIPES))
def test_user_recipes_launch_as_llamafactory_cli_would(
    case: str, engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key the recipe sets, and every form field it leaves out, launches with the value
    llamafactory-cli train would use (the recipe's, else the argument classes' default)."""
    recipe = {**BASE, **USER_RECIPES[case]}
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["webui-config", "--recipe", str(path)]) == 0
    launched = _launched(engine, tmp_path, f"roi_{case}.yaml", "Qwen2.5-VL-7B-Instruct")
    defaults = cli_defaults()
    wanted = {k: defaults[k] for k in FIELDS if k not in NOT_DEFAULTED and k in defaults}
    wanted.update(recipe)
    if wanted.get("lora_alpha") is None:
        wanted["lora_alpha"] = wanted["lora_rank"] * 2  # FinetuningArguments.__post_init__
    for key, value in wanted.items():
        if (
            key in ("output_dir", "do_train", "stage")
            or ONLY_FOR.get(key, wanted["finetuning_type"]) != wanted["finetuning_type"]
        ):
            continue
        if key == "quantization_method" and wanted.get("quantization_bit") is None:
            continue
        got = launched.get("pissa_init" if key == "pissa_init" else key)
        assert _as_cli_reads(key, got) == _as_cli_reads(key, value), (key, got, value)


def test_recipes_the_form_cannot_carry_are_refused_or_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def run(name: str, recipe: dict[str, Any]) -> int:
        path = tmp_path / f"{name}.yaml"
        text = yaml.safe_dump(recipe)
        path.write_text(("run_name: 2024-05-01\n" if name == "date" else "") + text, encoding="utf-8")
        return main(["webui-config", "--recipe", str(path), "--dir", str(tmp_path / "c")])

    assert run("date", BASE) == 2
    assert "run_name: not a JSON value (a YAML date or timestamp?); quote it" in capsys.readouterr().err
    assert run("export", {k: v for k, v in BASE.items() if k not in ("stage", "do_train")}) == 2
    assert "not a training recipe (do_train: None)" in capsys.readouterr().err
    assert run("predict", {**BASE, "do_train": False, "do_predict": True}) == 2
    assert "the web UI's Train tab always trains" in capsys.readouterr().err
    assert run("lora_rank_too_big", {**BASE, "lora_rank": 4096, "lora_alpha": 16}) == 2
    assert "lora_rank: 4096 does not fit the web UI's field train.lora_rank" in capsys.readouterr().err
    assert run("double_quant", {**BASE, "quantization_bit": 4, "double_quantization": False}) == 0
    assert (
        "double_quantization: the web UI always launches quantized runs with true" in capsys.readouterr().out
    )
    recipe = str(REPO / "recipes" / "phase1.yaml")
    assert main(["webui-config", "--recipe", recipe, "--dir", str(tmp_path / "d"), "--name", "x.yml"]) == 2
    assert "a file name ending in .yaml" in capsys.readouterr().err and not (tmp_path / "d").exists()
