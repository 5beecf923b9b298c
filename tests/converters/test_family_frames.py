"""Qwen3-VL / Qwen3.5 datasets (model_family qwen3_vl | qwen3_5) against independent references: the frame
from LLaMA-Factory's Qwen3-VL plugin resize and the released processor's own smart_resize (patch 16, merge 2),
the prompt coordinates from the norm1000 formula written out here, and the tokens LLaMA-Factory's own dataset
pipeline builds with each family's recipe template (no think block in the trained answer)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image
from qwenvl_roi.converters.config import DataConfig, load_data_config
from qwenvl_roi.converters.convert import convert
from qwenvl_roi.converters.meta import build_meta, load_dataset_meta

from qwenvl_roi.errors import ConvertError

ROOT = Path(__file__).resolve().parents[2]
# The released Qwen3-VL / Qwen3.5 processors (preprocessor_config.json): patch 16, merge 2, 256^2..4096^2 px.
QWEN3_PROCESSOR = {"patch_size": 16, "merge_size": 2, "min_pixels": 65536, "max_pixels": 16777216}


def norm1000(v: float, side: int) -> int:
    """Qwen3-VL's relative coordinate: QwenLM/Qwen3-VL tools/process_bbox.ipynb and ms-swift's norm1000."""
    return max(0, min(round(v / side * 1000), 1000))


@pytest.fixture(scope="module")
def real_qwen3_frame():
    from llamafactory.data.mm_plugin import get_mm_plugin
    from transformers import Qwen2VLImageProcessor

    plugin = get_mm_plugin("qwen3_vl", image_token="<|image_pad|>", video_token="<|video_pad|>")
    processor = Qwen2VLImageProcessor(**QWEN3_PROCESSOR)

    def frame(image: Image.Image, max_px: int, min_px: int) -> tuple[int, int]:
        resized = plugin._preprocess_image(image, image_max_pixels=max_px, image_min_pixels=min_px)
        _, gh, gw = processor(images=[resized], return_tensors="pt")["image_grid_thw"][0].tolist()
        return gw * 16, gh * 16

    return frame


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_frame_is_the_32_grid_of_llamafactory_and_the_processor(family: str, real_qwen3_frame) -> None:
    rng = random.Random(3)
    sizes = [(1920, 1080), (300, 200), (1, 1), (33, 4000), (4096, 4096), (1025, 767)]
    sizes += [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(5)]
    for max_px, min_px in [(1048576, 1024), (200704, 1024), (20000000, 200704)]:
        meta = build_meta(
            DataConfig(model_family=family, image_max_pixels=max_px, image_min_pixels=min_px), []
        )
        for w, h in sizes:
            assert meta.frame_size(w, h) == real_qwen3_frame(Image.new("RGB", (w, h)), max_px, min_px), (w, h)
    meta = build_meta(DataConfig(model_family=family), [])
    assert meta.frame_size(1920, 1080) == (1376, 768)  # qwen3-facts.md: 1920x1080 at 1048576 pixels


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_box_coordinates_are_relative_0_to_1000(family: str) -> None:
    meta = build_meta(DataConfig(model_family=family), [])
    rng = random.Random(5)
    for _ in range(200):
        w, h = rng.randint(2, 5000), rng.randint(2, 5000)
        box = sorted(rng.uniform(-5, w + 5) for _ in range(2)) + sorted(
            rng.uniform(-5, h + 5) for _ in range(2)
        )
        box = [box[0], box[2], box[1], box[3]]
        expected = [norm1000(box[0], w), norm1000(box[1], h), norm1000(box[2], w), norm1000(box[3], h)]
        assert meta.box_in_frame(box, w, h) == expected
    # exact halves round to even like Python's round in the references (0.5 -> 0, 1.5 -> 2)
    assert meta.box_in_frame([1, 3, 2000, 2000], 2000, 2000) == [0, 2, 1000, 1000]


def test_pictures_are_drawn_in_the_qwen3_frame(real_qwen3_frame, tmp_path: Path) -> None:
    """The eval gallery and the preview show a Qwen3-VL picture at the family's 32-grid, boxes where its
    relative coordinates put them."""
    from qwenvl_roi.pictures import FrameSettings, box_in_frame, model_view

    meta = build_meta(DataConfig(model_family="qwen3_vl", image_max_pixels=200704), [])
    path = tmp_path / "x.png"
    Image.new("RGB", (1025, 767), (90, 90, 90)).save(path)
    view = model_view(path, FrameSettings.from_meta(meta), 4096)
    fw, fh = real_qwen3_frame(Image.open(path), 200704, 1024)
    assert view.frame_size == view.image.size == (fw, fh)
    box = [101, 203, 517, 611]
    drawn = box_in_frame(box, view.original_size, view.frame_size, "qwen3_vl")
    want = [norm1000(box[0], 1025) * fw, norm1000(box[1], 767) * fh]
    want += [norm1000(box[2], 1025) * fw, norm1000(box[3], 767) * fh]
    assert drawn == pytest.approx([v / 1000 for v in want])


def test_processor_limits_default_to_the_family(tmp_path: Path) -> None:
    assert (DataConfig().processor_min_pixels, DataConfig().processor_max_pixels) == (3136, 12845056)
    for family in ("qwen3_vl", "qwen3_5"):
        cfg = DataConfig(model_family=family)
        assert (cfg.processor_min_pixels, cfg.processor_max_pixels) == (65536, 16777216)
        meta = build_meta(cfg, [])
        assert (meta.processor_min_pixels, meta.processor_max_pixels) == (65536, 16777216)
        assert "0-1000" in meta.coord_desc
    kept = DataConfig(model_family="qwen3_vl", processor_max_pixels=1003520)
    assert (kept.processor_min_pixels, kept.processor_max_pixels) == (65536, 1003520)
    # the shipped configs/data.yaml leaves them to the family
    shipped = load_data_config(ROOT / "configs" / "data.yaml", {"model_family": "qwen3_vl"})
    assert shipped.processor_min_pixels == 65536
    bad = tmp_path / "data.yaml"
    bad.write_text("seed: 1\nmodel_family: qwen3\n", encoding="utf-8")
    with pytest.raises(ConvertError, match=r"data.yaml:2: model_family: Input should be .*'qwen3_vl'"):
        load_data_config(bad)


def _dataset(root: Path) -> None:
    """Odd image sizes (rounding matters), boxes touching and crossing the borders, one normal image."""
    abn = root / "abn" / "batch"
    abn.mkdir(parents=True)
    for name, size, lines in [
        ("a0.jpg", (333, 251), ["a0.jpg;0;0;41;37;crack", "a0.jpg;200;100;333;251;spall"]),
        ("a1.png", (1919, 1081), ["a1.png;1000;500;1400;900;crack"]),
    ]:
        Image.effect_noise(size, 30).convert("RGB").save(abn / name)
        (abn / name).with_suffix(".txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "nor" / "scene").mkdir(parents=True)
    Image.effect_noise((640, 480), 30).convert("RGB").save(root / "nor" / "scene" / "n0.png")


def _recipe_template(family: str) -> dict:
    """The template keys of the family's phase-1 recipe, as users run it."""
    recipe = yaml.safe_load((ROOT / "recipes" / family / "phase1.yaml").read_text(encoding="utf-8"))
    return {k: recipe[k] for k in ("template", "enable_thinking") if k in recipe}


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_llamafactory_pipeline_sees_our_frame_and_no_think_block(
    family: str, request: pytest.FixtureRequest, tmp_path: Path, make_config
) -> None:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model = request.getfixturevalue(f"tiny_{family}")
    _dataset(tmp_path)
    cfg = make_config(
        model_family=family, train_ratio=1.0, val_ratio=0.0, test_ratio=0.0, prompt_language="en"
    )
    convert(cfg, progress=False)
    out = tmp_path / "out"
    meta = load_dataset_meta(out)
    samples = [json.loads(x) for x in (out / "regions_train.jsonl").read_text(encoding="utf-8").splitlines()]
    records = json.loads((out / "sft_train.json").read_text(encoding="utf-8"))
    assert len(samples) == len(records) >= 3
    # prompt coordinates = the norm1000 formula on the original-pixel boxes
    for sample, record in zip(samples, records, strict=True):
        prompt = record["messages"][1]["content"]
        assert "relative coordinates: integers 0-1000" in prompt
        w, h = sample["width"], sample["height"]
        for region in sample["regions"]:
            x1, y1, x2, y2 = region["box"]
            coords = [norm1000(x1, w), norm1000(y1, h), norm1000(x2, w), norm1000(y2, h)]
            want = f"{region['id']}: [{', '.join(map(str, coords))}]"
            assert want in prompt.splitlines(), (want, prompt)

    def encoded(template_args: dict) -> tuple[list, object]:
        args = {
            "model_name_or_path": str(model),
            "stage": "sft",
            "do_train": True,
            "finetuning_type": "lora",
            "dataset": "roi_train",
            "dataset_dir": str(tmp_path / "dinfo"),
            "cutoff_len": 4096,
            "output_dir": str(tmp_path / "lf-out"),
            "overwrite_cache": True,
            "report_to": "none",
            "image_max_pixels": meta.image_max_pixels,
            "image_min_pixels": meta.image_min_pixels,
            "use_cpu": True,
            **template_args,
        }
        model_args, data_args, training_args, _, _ = get_train_args(args)
        module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
        data = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)
        return list(data["train_dataset"]), module["tokenizer"]

    rows, tokenizer = encoded(_recipe_template(family))
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    by_answer = {r["messages"][2]["content"]: s for s, r in zip(samples, records, strict=True)}
    assert len(rows) == len(records)
    for row in rows:
        labels = [t for t in row["labels"] if t != -100]
        answer = tokenizer.decode(labels, skip_special_tokens=False)
        assert "<think>" not in answer and "</think>" not in answer
        content = answer.removesuffix("<|im_end|>\n")
        assert content != answer and content in by_answer  # exactly the record's answer, then the turn end
        sample = by_answer[content]
        fw, fh = meta.frame_size(sample["width"], sample["height"])
        assert row["input_ids"].count(pad) == (fw // 32) * (fh // 32)
        prompt = tokenizer.decode(row["input_ids"][: len(row["input_ids"]) - len(labels)])
        if family == "qwen3_5":  # enable_thinking: false puts the empty think block into the prompt
            assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n"), prompt[-80:]
        else:
            assert prompt.endswith("<|im_start|>assistant\n")
    if family == "qwen3_5":
        # the check above can fail: LLaMA-Factory's template with thinking on (its default) trains an empty
        # think block (the plugin refuses such a run, tests/plugin/test_family_check.py)
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments, ModelArguments
        from llamafactory.model import load_tokenizer

        module = load_tokenizer(ModelArguments(model_name_or_path=str(model)))
        thinking = get_template_and_fix_tokenizer(
            module["tokenizer"], DataArguments(template="qwen3_5", enable_thinking=True)
        )
        record = records[0]
        # image paths in the records are relative to the dataset_info.json folder, as LLaMA-Factory reads them
        images = [str((tmp_path / "dinfo" / image).resolve()) for image in record["images"]]
        messages = thinking.mm_plugin.process_messages(
            record["messages"][1:], images, [], [], module["processor"]
        )
        pairs = thinking.encode_multiturn(module["tokenizer"], messages, record["messages"][0]["content"])
        assert re.match(r"<think>\s*</think>", module["tokenizer"].decode(pairs[-1][1]))
