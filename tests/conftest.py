"""Session-wide test environment: offline Hugging Face, caches in a temporary HF_HOME."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="qwenvl-roi-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each (torch here and in the processes
    # the tests start), not two threads each spinning against the other worker's
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

import shutil  # noqa: E402
import socket  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def chromium_page() -> Iterator[Any]:
    """A page of headless Debian Chromium driven by Playwright (1200 x 800), for static HTML opened from
    disk; skips when Chromium is not installed (Playwright's own browser download does not work here)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--headless", "--no-sandbox"]
        )
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 800})
        finally:
            browser.close()


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Gives a TCP port free on loopback now (servers and torchrun ranks of parallel test workers)."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return pick


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2.5-VL folder (built once per test session; treat it as read-only)."""
    from qwenvl_roi.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-models") / "qwen2_5_vl", "qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen2-VL folder (built once per test session; treat it as read-only)."""
    from qwenvl_roi.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-models") / "qwen2_vl", "qwen2_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen3-VL folder (deepstack mergers; built once per session; read-only)."""
    from qwenvl_roi.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-models") / "qwen3_vl", "qwen3_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Qwen3.5 folder (linear and full attention layers; once per session; read-only)."""
    from qwenvl_roi.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-models") / "qwen3_5", "qwen3_5")


# Session fixtures worth building once for the whole run (a LoRA trained through llamafactory-cli, ~50 s).
_SHARED_SESSION_FIXTURES = {"lora_adapter", "merged_model"}


def _xdist_group(item: pytest.Item) -> str | None:
    """The group of tests that share an expensive fixture with this one, or None."""
    if _SHARED_SESSION_FIXTURES & set(item.fixturenames):
        return "trained-tiny-model"
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    shared = sorted(
        name
        for name in item.fixturenames
        if name in defs and defs[name] and defs[name][-1].scope in ("module", "class", "package")
    )
    if not shared:
        return None
    params = getattr(getattr(item, "callspec", None), "params", {})
    tag = ",".join(f"{n}={params[n]}" for n in shared if n in params)
    return f"{item.nodeid.split('::')[0]}:{tag}"  # no "]": xdist reads "...]" as a test of no group


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep tests that share an expensive fixture on one pytest-xdist worker (`make test` runs
    `-n 2 --dist loadgroup`): each worker would otherwise build it again. Tests sharing nothing costly
    stay single and are spread freely, the real trainings first (xdist hands out groups by size, then
    single tests in collection order), so a long one does not start last while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if not getattr(config.option, "loadgroup", False):  # set in xdist workers under --dist loadgroup
        return
    for item in items:
        group = _xdist_group(item)
        if group is None:
            continue
        # What xdist's own hook does with `xdist_group` marks (`nodeid@group`), written where pytest 9.2
        # keeps the id: xdist 3.8 still assigns `item._nodeid`, which pytest 9.2 no longer reads.
        nodeid = f"{item.nodeid}@{group}"
        if hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(nodeid)
        else:
            item._nodeid = nodeid
