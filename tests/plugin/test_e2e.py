"""The recipes through the real `llamafactory-cli` on tiny models: phases, errors, resume, ZeRO, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The tiny models have 4 vision blocks: the recipes' top-8 / top-2 are scaled down to fit.
PHASE2 = {"roi_vision_lora_top_blocks": 2}
PHASE3 = {"roi_vision_lora_top_blocks": 3, "roi_vision_unfreeze_top_blocks": 1}


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def _groups(out: Path) -> dict[str, dict]:
    table = json.loads((out / "trainable_params.json").read_text())
    return {g["group"]: g for g in table["groups"]}


@pytest.fixture(scope="module")
def phase3_run(
    lf, tiny_qwen2_5_vl: Path, roi_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A phase-3 run (vision LoRA + an unfrozen block at a visible lr); the export test merges it."""
    work = tmp_path_factory.mktemp("phase3")
    proc = lf.train("phase3.yaml", tiny_qwen2_5_vl, roi_dataset, work, **PHASE3, roi_lr_vision_unfrozen=1e-2)
    _ok(proc)
    assert "qwenvl-roi trainable parameters:" in proc.stdout + proc.stderr
    return work / "out"


def test_phase3_qwen2_5_vl(phase3_run: Path) -> None:
    groups = _groups(phase3_run)
    assert {k: g["lr"] for k, g in groups.items()} == {
        "language": 1e-4,
        "projector": 2e-4,
        "projector/no_decay": 2e-4,
        "vision_lora": 5e-5,
        "vision_unfrozen": 1e-2,
        "vision_unfrozen/no_decay": 1e-2,
    }
    adapter = json.loads((phase3_run / "adapter_config.json").read_text())
    assert sorted(adapter["modules_to_save"]) == ["model.visual.blocks.3", "model.visual.merger"]
    table = json.loads((phase3_run / "trainable_params.json").read_text())
    assert table["vision_lora_blocks"] == [1, 2] and table["vision_unfrozen_blocks"] == [3]
    from safetensors.torch import load_file

    saved = load_file(phase3_run / "adapter_model.safetensors")
    lora_blocks = {k.split(".")[5] for k in saved if ".visual.blocks." in k and "lora_" in k}
    assert lora_blocks == {"1", "2"}  # peft shortens target_modules when saving; the weights tell
    assert (phase3_run / "checkpoint-3" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("family", "phase"), [("qwen2_5_vl", 1), ("qwen2_5_vl", 2)])
def test_phase_runs(family: str, phase: int, request, lf, roi_dataset: Path, tmp_path: Path) -> None:
    model = request.getfixturevalue(f"tiny_{family}")
    overrides = {1: {}, 2: PHASE2, 3: PHASE3}[phase]
    _ok(lf.train(f"phase{phase}.yaml", model, roi_dataset, tmp_path, **overrides))
    groups = _groups(tmp_path / "out")
    expected = {1: {"language", "projector"}, 2: {"language", "projector", "vision_lora"}}.get(
        phase, {"language", "projector", "vision_lora", "vision_unfrozen"}
    )
    assert {k.split("/")[0] for k in groups} == expected
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert all(isinstance(e.get("loss", 0.0), float) for e in state["log_history"])


def test_web_ui_saved_yaml_with_extra_arguments(
    lf, tiny_qwen2_vl: Path, family_dataset, tmp_path: Path
) -> None:
    """Qwen2-VL phase 3 launched the web UI's way: its extra-arguments JSON merged, saved by save_cmd."""
    import yaml
    from llamafactory.webui.common import save_cmd

    args = yaml.safe_load((lf.RECIPES / "phase3.yaml").read_text())
    args = {k: v for k, v in args.items() if not k.startswith("roi_")}
    args.update(lf.CPU_OVERRIDES)
    args.update({"model_name_or_path": str(tiny_qwen2_vl), "dataset_dir": str(family_dataset("qwen2_vl"))})
    args["output_dir"] = str(tmp_path / "out")
    extra_args = json.dumps(
        {"roi_train_projector": True, "roi_lr_projector": 2e-4, **PHASE3, "roi_lr_vision_lora": 5e-5}
    )
    args.update(json.loads(extra_args))  # what the web UI's runner does with the "Extra arguments" box
    saved = save_cmd(args)
    _ok(lf.run([str(lf.CLI), "train", saved], tmp_path))
    groups = _groups(tmp_path / "out")
    assert {k: g["lr"] for k, g in groups.items() if "/" not in k} == {
        "language": 1e-4,
        "projector": 2e-4,
        "vision_lora": 5e-5,
        "vision_unfrozen": 1e-4,  # roi_lr_vision_unfrozen unset: learning_rate
    }
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert sorted(adapter["modules_to_save"]) == ["model.visual.blocks.3", "model.visual.merger"]


def test_misspelt_key_stops_the_cli(lf, tiny_qwen2_5_vl: Path, roi_dataset: Path, tmp_path: Path) -> None:
    proc = lf.train("phase1.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path, roi_train_projecter=True)
    assert proc.returncode != 0
    assert "unknown qwenvl-roi key 'roi_train_projecter' (did you mean 'roi_train_projector'?)" in proc.stderr
    assert not (tmp_path / "out").exists()
    # the message alone, not under LLaMA-Factory's traceback (red team of issue #21: ~25 lines came first)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "qwenvl-roi refused the run: " in proc.stderr


def test_resume_after_kill(lf, tiny_qwen2_5_vl: Path, roi_dataset: Path, tmp_path: Path) -> None:
    """SIGKILL mid-run, then the same command resumes from the last checkpoint (optimizer groups included)."""
    # Checkpoints far apart (100 steps): the kill lands after checkpoint-100 is complete and long before the
    # next save starts. With saves 10 steps apart the kill could hit checkpoint-20 half-written, which the
    # Trainer then refuses to resume from ("Can't find a valid checkpoint"): a race in the test itself.
    overrides = {**PHASE2, "max_steps": 400, "save_steps": 100, "save_total_limit": 2}
    overrides.update(
        {"eval_strategy": "'no'", "load_best_model_at_end": False}
    )  # quoted: YAML reads no as false
    merged = lf.train_overrides(tiny_qwen2_5_vl, roi_dataset, tmp_path, **overrides)
    cmd = lf.cli_args("train", lf.RECIPES / "phase2.yaml", merged)
    env = lf.env(tmp_path)
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = [
                p for p in (tmp_path / "out").glob("checkpoint-*") if (p / "trainer_state.json").is_file()
            ]
            if done:
                time.sleep(0.3)  # let the checkpoint's last files land, then kill hard
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    assert not (tmp_path / "out" / "trainer_state.json").exists()  # really killed before the end
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "out").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] < 400
    resumed = lf.run(cmd, tmp_path, env)
    _ok(resumed)
    assert "Resuming training from" in resumed.stderr + resumed.stdout
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 400
    first_logged = min(e["step"] for e in state["log_history"] if "loss" in e and e["step"] > checkpoints[-1])
    assert first_logged == checkpoints[-1] + 1


# ZeRO-2 on Qwen2.5-VL; ZeRO-3 on Qwen3-VL, whose projector (merger and deepstack mergers) is the
# family-specific part ZeRO-3 has to gather and save whole.
@pytest.mark.parametrize(("config", "family"), [("ds_z2.json", "qwen2_5_vl"), ("ds_z3.json", "qwen3_vl")])
def test_deepspeed_two_cpu_ranks(
    config: str, family: str, request, lf, family_dataset, tmp_path: Path
) -> None:
    model = request.getfixturevalue(f"tiny_{family}")
    recipe = "phase3.yaml" if family == "qwen2_5_vl" else f"{family}/phase3.yaml"
    env = lf.env(tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2")
    ds = str(lf.RECIPES / "deepspeed" / config)
    proc = lf.train(recipe, model, family_dataset(family), tmp_path, env=env, deepspeed=ds, **PHASE3)
    _ok(proc)
    assert "world size: 2" in proc.stdout + proc.stderr
    groups = _groups(tmp_path / "out")
    assert groups["vision_unfrozen"]["params"] > 0 and groups["vision_lora"]["lr"] == 5e-5
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    base = load_file(model / "model.safetensors")
    whole = ["model.visual.blocks.3.attn.qkv.weight", "model.visual.merger.linear_fc1.weight"]
    if family == "qwen3_vl":
        whole += [f"model.visual.deepstack_merger_list.{i}.linear_fc1.weight" for i in range(3)]
    else:
        whole[1] = "model.visual.merger.mlp.0.weight"
    for (
        key
    ) in whole:  # full tensors saved, not ZeRO-3 shards (Qwen2.5-VL files keep the legacy "visual." names)
        base_key = key if key in base else key.removeprefix("model.")
        assert saved[f"base_model.model.{key}"].shape == base[base_key].shape, key
    assert saved["base_model.model.model.visual.blocks.3.attn.qkv.weight"].shape == (192, 64)


def test_qlora_phase1_and_merge_into_full_precision_base(
    lf, tiny_qwen2_5_vl: Path, roi_dataset: Path, tmp_path: Path
) -> None:
    proc = lf.train("phase1_qlora.yaml", tiny_qwen2_5_vl, roi_dataset, tmp_path)
    _ok(proc)
    assert "Quantizing model to 4 bit with bitsandbytes" in proc.stdout + proc.stderr
    assert _groups(tmp_path / "out")["projector"]["params"] > 0  # projector kept unquantized and trained
    adapter = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["model.visual.merger"]
    export = {
        "model_name_or_path": str(tiny_qwen2_5_vl),  # the unquantized base
        "adapter_name_or_path": str(tmp_path / "out"),
        "export_dir": str(tmp_path / "merged"),
    }
    _ok(lf.run_cli("export", lf.RECIPES / "export_phase1_qlora.yaml", export, tmp_path, env=lf.env(tmp_path)))
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert "quantization_config" not in config


def test_export_merges_adapter_and_unfrozen_blocks(
    phase3_run: Path, lf, tiny_qwen2_5_vl: Path, tmp_path
) -> None:
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    export = {
        "model_name_or_path": str(tiny_qwen2_5_vl),
        "adapter_name_or_path": str(phase3_run),
        "export_dir": str(tmp_path / "merged"),
        "infer_dtype": "float32",
    }
    _ok(lf.run_cli("export", lf.RECIPES / "export_phase3.yaml", export, tmp_path, env=lf.env(tmp_path)))
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "R1: normal"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    image = Image.effect_noise((84, 56), 40).convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    base = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl, dtype=torch.float32)
    base_block = base.model.visual.blocks[3].attn.qkv.weight.detach().clone()
    base_merger = base.model.visual.merger.mlp[0].weight.detach().clone()
    with_adapter = PeftModel.from_pretrained(base, phase3_run).eval()
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = with_adapter(**inputs).logits
        got = merged(**inputs).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # the unfrozen block and the projector trained, and export carried them over
    assert not torch.allclose(merged.model.visual.blocks[3].attn.qkv.weight, base_block)
    assert not torch.allclose(merged.model.visual.merger.mlp[0].weight, base_merger)
    assert torch.equal(
        merged.model.visual.blocks[0].attn.qkv.weight, base.model.visual.blocks[0].attn.qkv.weight
    )
