"""Real browser, real web UI: pick the ROI dataset, preview it, launch a short CPU phase with roi_ keys.

Headless Debian Chromium driven by Playwright (its own browser download does not work here), the stock
`llamafactory-cli webui` started from a project folder on 127.0.0.1 with a free port. Nothing is mocked:
the web UI writes its YAML and launches `llamafactory-cli train`, where the plugin reads the roi_ keys
from the "Extra arguments" box. Set QWENVL_ROI_SCREENSHOT=<png> to keep a screenshot (the README's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODEL_NAME = "Qwen2.5-VL-3B-Instruct"  # any Qwen2.5-VL entry: it selects the qwen2_vl template
SIDE = 112


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder: generated messy data converted into dataset_info/ by the real converters."""
    from qwenvl_roi.converters.convert import convert

    from qwenvl_roi.demo.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("webui-project")
    synth = SynthConfig(n_abnormal=12, n_normal=12, size=SIDE, images_per_batch=2)
    generate(root / "data", synth, progress=False)
    convert(
        {
            "abnormal_dir": str(root / "data" / "abnormal"),
            "normal_dir": str(root / "data" / "normal"),
            "out_dir": str(root / "prepared"),
            "dataset_info_dir": str(root / "dataset_info"),
            "label_map": {"Crack": "裂缝", "渗水": "渗漏", "剥落": "掉块"},
            "image_max_pixels": SIDE * SIDE,
            "train_ratio": 0.6,
            "val_ratio": 0.2,
            "test_ratio": 0.2,
        },
        progress=False,
    )
    return root


@pytest.fixture(scope="module")
def webui(project: Path, free_port: Callable[[], int]) -> Iterator[str]:
    """`llamafactory-cli webui` from the project folder, bound to loopback on a free port."""
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    env.pop("QWENVL_ROI_DATA_DIR", None)
    log = open(project / "webui.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("llamafactory-cli")), "webui"],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"web UI exited early:\n{(project / 'webui.log').read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("web UI did not start within 300 s") from None
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


@contextmanager
def _opened(url: str, chromium: str) -> Iterator[Any]:
    """The web UI in headless Debian Chromium, once its Train tab has rendered."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--headless", "--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(url)
            page.get_by_label("Model name").wait_for(timeout=120_000)
            yield page
        finally:
            browser.close()


def _field(page, name: str):
    """A Gradio textbox by its label text (labels carry an info line, so match the label span)."""
    label = re.compile(r"^\s*" + re.escape(name) + r"\s*$")
    return (
        page.locator("label")
        .filter(has=page.locator("[data-testid=block-info]", has_text=label))
        .locator("textarea, input")
        .first
    )


def _choose(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).first.click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_timeout(300)


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(f"number input for {label}", exact=True).first
    box.fill(str(value))
    box.press("Enter")


def _screenshot(page, path: str, loss_plot) -> None:
    """The README picture: from the dataset row down to the loss plot (extra arguments with roi_ keys)."""
    page.get_by_text("Multimodal configurations").click()  # fold it again: keep the picture short
    page.wait_for_timeout(500)
    scroll = page.evaluate("window.scrollY")
    top = _field(page, "Data dir").bounding_box()["y"] + scroll - 80
    box = loss_plot.bounding_box()
    bottom = box["y"] + scroll + box["height"] + 20
    page.screenshot(path=path, full_page=True, clip={"x": 0, "y": top, "width": 1400, "height": bottom - top})


def test_launch_a_phase_from_the_webui(webui: str, project: Path, tiny_qwen2_5_vl: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import expect

    out_name = "roi_webui_phase1"
    extra = {
        "roi_train_projector": True,
        "roi_lr_language": 1e-3,
        "roi_lr_projector": 2e-3,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "report_to": "none",
        "use_cpu": True,
    }
    with _opened(webui, chromium) as page:
        # the plugin made the project's dataset folder the default
        expect(_field(page, "Data dir")).to_have_value("dataset_info", timeout=60_000)

        _choose(page, "Model name", MODEL_NAME)
        expect(page.get_by_label("Chat template", exact=True).first).to_have_value("qwen2_vl")
        _field(page, "Model path").fill(str(tiny_qwen2_5_vl))
        _field(page, "Model path").press("Tab")

        _choose(page, "Dataset", "roi_train")
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Preview dataset").click()
        expect(page.get_by_text("<regions>").first).to_be_visible(timeout=30_000)
        n_train = len(json.loads((project / "prepared" / "sft_train.json").read_text(encoding="utf-8")))
        expect(_field(page, "Count")).to_have_value(str(n_train))
        page.get_by_role("button", name="Close").click()

        _field(page, "Learning rate").fill("1e-3")
        _field(page, "Epochs").fill("2")
        _field(page, "Max samples").fill("100")
        _choose(page, "Compute type", "fp32")
        _set_number(page, "Batch size", 4)
        _set_number(page, "Gradient accumulation", 1)
        _set_number(page, "Cutoff length", 1024)
        page.get_by_text("Extra configurations").click()
        _set_number(page, "Logging steps", 1)
        _set_number(page, "Save steps", 10)
        _field(page, "Extra arguments").fill(json.dumps(extra))
        page.get_by_text("Multimodal configurations").click()
        _field(page, "Image max pixels").fill(str(SIDE * SIDE))
        out_box = page.get_by_label("Output dir", exact=True).first
        out_box.fill(out_name)
        out_box.press("Enter")

        page.get_by_role("button", name="Start").click()
        expect(page.get_by_text("Finished.").first).to_be_visible(timeout=600_000)
        assert "loss" in page.locator("body").inner_text().lower()
        loss_plot = page.locator(".block").filter(has=page.get_by_text("Loss", exact=True)).last
        expect(loss_plot.locator("img, svg, canvas").first).to_be_visible()
        shot = os.environ.get("QWENVL_ROI_SCREENSHOT")
        if shot:
            _screenshot(page, shot, loss_plot)

    run_dir = project / "saves" / MODEL_NAME / "lora" / out_name
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")), f"no checkpoint in {run_dir}"
    assert (run_dir / "adapter_model.safetensors").is_file()
    # the roi_ keys from the Extra arguments box reached the plugin in the training subprocess
    table = json.loads((run_dir / "trainable_params.json").read_text(encoding="utf-8"))
    assert table["settings"]["roi_train_projector"] is True
    groups = {g["group"]: g for g in table["groups"]}
    assert groups["projector"]["lr"] == pytest.approx(2e-3)
    assert groups["language"]["lr"] == pytest.approx(1e-3)
    logged = [json.loads(line) for line in (run_dir / "trainer_log.jsonl").read_text().splitlines()]
    assert any("loss" in rec for rec in logged)


def test_a_recipe_loads_into_the_form(webui: str, project: Path) -> None:
    """`qwenvl-roi webui-config` + the web UI's own "Load arguments": the recipe fills the Train tab, its
    roi_ and verdict-metric keys in "Extra arguments" (tests/webui/test_webui_config.py checks what such a
    form launches, for every recipe)."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import expect

    from qwenvl_roi.cli import main

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "phase2.yaml"
    assert main(["webui-config", "--recipe", str(recipe), "--dir", str(project / "llamaboard_config")]) == 0
    with _opened(webui, chromium) as page:
        _choose(page, "Model name", MODEL_NAME)
        page.get_by_text("Extra configurations").click()
        config = page.get_by_label("Config path", exact=True).first
        config.fill("roi_phase2.yaml")
        config.press("Enter")
        page.get_by_role("button", name="Load arguments").click()
        extra = _field(page, "Extra arguments")
        expect(extra).to_have_value(re.compile(r'"roi_eval_verdicts": true'), timeout=30_000)
        loaded = json.loads(extra.input_value())
        assert (
            loaded["roi_vision_lora_top_blocks"] == 8 and loaded["metric_for_best_model"] == "eval_roi_auroc"
        )
        expect(_field(page, "Learning rate")).to_have_value("0.0001")
        expect(_field(page, "Model path")).to_have_value("saves/qwen2_5_vl-7b/roi/phase1-merged")
        expect(page.get_by_label("Chat template", exact=True).first).to_have_value("qwen2_vl")
