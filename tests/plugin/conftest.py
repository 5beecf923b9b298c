"""Plugin-test fixtures: a tiny sharegpt dataset with roi_meta, and a runner for the real llamafactory-cli."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
CLI = Path(sys.executable).with_name("llamafactory-cli")

# Overrides that make the GPU recipes run on a tiny model on CPU in seconds.
CPU_OVERRIDES: dict[str, object] = {
    "use_cpu": True,
    "bf16": False,
    "report_to": "none",
    "max_steps": 3,
    "per_device_train_batch_size": 2,
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
    "save_steps": 3,
    "eval_steps": 3,
    "cutoff_len": 512,
    "preprocessing_num_workers": 1,
    "dataloader_num_workers": 0,
    "overwrite_cache": True,
    "plot_loss": False,
    "lora_rank": 4,
    "lora_alpha": 8,
    "lora_dropout": 0.0,
    "warmup_ratio": 0.0,
    "seed": 0,
    # the recipes' verdict metrics (and the best checkpoint by them) need a converted eval set with its
    # regions file; write_dataset's has none: keep the best by eval_loss (tests/plugin/test_verdict_metrics.py
    # runs the verdicts on a converted set)
    "roi_eval_verdicts": False,
    "metric_for_best_model": "eval_loss",
    "greater_is_better": False,
}


def write_dataset(
    root: Path,
    *,
    max_pixels: int = 1048576,
    min_pixels: int = 1024,
    n: int = 8,
    model_family: str = "qwen2_5_vl",
) -> Path:
    """Images + sharegpt records + dataset_info.json with roi_meta per entry (the converters' contract)."""
    from PIL import Image

    rng = random.Random(0)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        path = images / f"img{i}.png"
        shade = 60 + 20 * (i % 8)
        Image.new("RGB", (56, 56), (shade, shade, shade)).save(path)
        verdict = "abnormal" if i % 2 else "normal"
        boxes = [[rng.randrange(0, 28), rng.randrange(0, 28), 40, 50] for _ in range(2)]
        records.append(
            {
                "messages": [
                    {"role": "system", "content": "You are an industrial inspection assistant."},
                    {
                        "role": "user",
                        "content": f"<image>Judge the image and every candidate region.\n"
                        f"<regions> R1: {boxes[0]} R2: {boxes[1]} </regions>",
                    },
                    {"role": "assistant", "content": f"image: {verdict}\nR1: normal\nR2: {verdict}"},
                ],
                "images": [str(path)],
            }
        )
    (root / "sft_train.json").write_text(json.dumps(records[: n - 2], indent=1))
    (root / "sft_val.json").write_text(json.dumps(records[n - 2 :], indent=1))
    meta = {
        "image_max_pixels": max_pixels,
        "image_min_pixels": min_pixels,
        "model_family": model_family,
        "meta_file": "dataset_meta.json",
    }
    entry = {"formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"}}
    entry["tags"] = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    info = {
        "roi_train": {"file_name": "sft_train.json", **entry, "roi_meta": meta},
        "roi_val": {"file_name": "sft_val.json", **entry, "roi_meta": meta},
    }
    (root / "dataset_info.json").write_text(json.dumps(info, indent=2))
    return root


@pytest.fixture(scope="session")
def roi_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dataset_dir with roi_train / roi_val built for the recipes' pixel limits (Qwen2.5-VL frame)."""
    return write_dataset(tmp_path_factory.mktemp("roi-data"))


@pytest.fixture(scope="session")
def family_dataset(roi_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family name -> a dataset_dir like roi_dataset whose roi_meta names that family (built once each)."""
    made = {"qwen2_5_vl": roi_dataset}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = write_dataset(tmp_path_factory.mktemp(f"roi-data-{family}"), model_family=family)
        return made[family]

    return get


def lf_env(tmp_root: Path, **extra: str) -> dict[str, str]:
    """Environment of a llamafactory-cli child: offline, own caches, no stray GPUs."""
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HOME": str(tmp_root / "hf_home"),
            "TOKENIZERS_PARALLELISM": "false",
            "CUDA_VISIBLE_DEVICES": "",
            "DISABLE_VERSION_CHECK": "1",
            "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # torchrun
            "TORCH_EXTENSIONS_DIR": str(Path(os.environ.get("TMPDIR", "/tmp")) / "qwenvl-roi-torch-ext"),
        }
    )
    env.update(extra)
    return env


def run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """A child process in ``cwd`` with the llamafactory-cli environment; output captured, never raises."""
    return subprocess.run(
        args, cwd=cwd, env=env or lf_env(cwd), capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_args(command: str, recipe: Path, overrides: dict[str, object]) -> list[str]:
    """`llamafactory-cli <command> <recipe> key=value ...` as users type it (None: null, bools lower-case)."""
    args = [str(CLI), command, str(recipe)]
    for key, value in overrides.items():
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        args.append(f"{key}={text}")
    return args


def run_cli(
    command: str, recipe: Path, overrides: dict[str, object], cwd: Path, env: dict[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`llamafactory-cli <command> <recipe> key=value ...` as users run it; output captured."""
    return run(cli_args(command, recipe, overrides), cwd, env=env, timeout=timeout)


def train_overrides(model: Path, data: Path, workdir: Path, **overrides: object) -> dict[str, object]:
    """CPU overrides, the tiny model and data, output in workdir/out; extra overrides win."""
    return {
        **CPU_OVERRIDES,
        "model_name_or_path": str(model),
        "dataset_dir": str(data),
        "output_dir": str(workdir / "out"),
        **overrides,
    }


def train(
    recipe: str,
    model: Path,
    data: Path,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    **overrides: object,
) -> subprocess.CompletedProcess[str]:
    """`llamafactory-cli train recipes/<recipe>` on the tiny model with CPU overrides; extra overrides win.

    Output goes to workdir/out unless output_dir is overridden.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    merged = train_overrides(model, data, workdir, **overrides)
    return run_cli("train", RECIPES / recipe, merged, workdir, env=env or lf_env(workdir), timeout=timeout)


def recipe_case(recipe: str, model: Path, data: Path, out: Path, **overrides: object) -> dict[str, object]:
    """recipes/<recipe> as the argument dict a probe hands to get_train_args: tiny model, CPU, no DeepSpeed.

    Overrides win. None values are kept (the caller drops those LLaMA-Factory must not see).
    """
    case = yaml.safe_load((RECIPES / recipe).read_text())
    case.update(
        {
            "model_name_or_path": str(model),
            "dataset_dir": str(data),
            "output_dir": str(out),
            "use_cpu": True,
            "bf16": False,
            "report_to": "none",
            "deepspeed": None,
            # as CPU_OVERRIDES: write_dataset's eval set has no regions file for the verdict metrics
            "roi_eval_verdicts": False,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
            **overrides,
        }
    )
    return case


def run_probe(script: Path, payload: object, tmp: Path, env: dict[str, str] | None = None) -> Any:
    """Run a probe script in a fresh interpreter (so the .pth hook decides what is patched): ``payload`` goes
    in as a JSON file, the JSON file it writes comes back; a failing probe fails the test with its stderr."""
    tmp.mkdir(parents=True, exist_ok=True)
    src, dst = tmp / "probe_in.json", tmp / "probe_out.json"
    src.write_text(json.dumps(payload))
    proc = run([sys.executable, str(script), str(src), str(dst)], tmp, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(dst.read_text())


def training_batch(recipe: Path, model: Path, data: Path, tmp: Path, dataset: str = "roi_val") -> dict:
    """A batch of ``dataset`` exactly as `llamafactory-cli train <recipe>` feeds the model: LLaMA-Factory's
    own dataset pipeline with the recipe's template and pixel limits, then its SFT collator, which adds the
    positions (get_rope_index with mm_token_type_ids) that forwards with images need in the Qwen3 families.

    Runs in this process without the recipe's roi_ keys (they change no data)."""
    import torch
    from llamafactory.data import (
        SFTDataCollatorWith4DAttentionMask,
        get_dataset,
        get_template_and_fix_tokenizer,
    )
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer
    from transformers import AutoModelForImageTextToText

    keys = ("template", "enable_thinking", "image_max_pixels", "image_min_pixels", "cutoff_len")
    config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    args = {k: config[k] for k in keys if k in config}
    args.update(
        {
            "model_name_or_path": str(model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": dataset,
            "dataset_dir": str(data),
            "output_dir": str(tmp / "batch-out"),
            "overwrite_cache": True,
            "report_to": "none",
            "use_cpu": True,
            "preprocessing_num_workers": 1,
        }
    )
    model_args, data_args, training_args, _, _ = get_train_args(args)
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    rows = list(
        get_dataset(template, model_args, data_args, training_args, stage="sft", **module)["train_dataset"]
    )
    rope_model = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)  # get_rope_index
    collator = SFTDataCollatorWith4DAttentionMask(
        template=template, model=rope_model, pad_to_multiple_of=8, label_pad_token_id=-100, **module
    )
    return collator([{k: v for k, v in row.items()} for row in rows])


def forward_logits(model: Any, batch: dict) -> torch.Tensor:
    """Logits of a no-grad forward on a collated batch (labels left out: only the logits are compared)."""
    import torch

    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.fixture(scope="session")
def lf() -> SimpleNamespace:
    """The helpers above for test modules (pytest's importlib mode gives tests no package to import from)."""
    helpers = (
        run,
        cli_args,
        run_cli,
        train_overrides,
        train,
        recipe_case,
        run_probe,
        write_dataset,
        training_batch,
        forward_logits,
    )
    return SimpleNamespace(
        RECIPES=RECIPES,
        CLI=CLI,
        CPU_OVERRIDES=CPU_OVERRIDES,
        env=lf_env,
        **{f.__name__: f for f in helpers},
    )
