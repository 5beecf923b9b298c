"""The web UI opens on the project's dataset_info folder, via the installed plugin, only inside a project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from qwenvl_roi.plugin.webui import ENV_DATA_DIR, project_data_dir

REPO_ROOT = Path(__file__).resolve().parents[2]

PROBE = (
    "import llamafactory.webui.common as c, llamafactory.webui.components.train as t, "
    "llamafactory.webui.components.eval as e; "
    "print(c.DEFAULT_DATA_DIR, t.DEFAULT_DATA_DIR, e.DEFAULT_DATA_DIR)"
)


def _project(tmp_path: Path) -> Path:
    (tmp_path / "dataset_info").mkdir(parents=True)
    (tmp_path / "dataset_info" / "dataset_info.json").write_text("{}", encoding="utf-8")
    return tmp_path


def test_detection_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    assert project_data_dir(tmp_path) is None
    (tmp_path / "dataset_info").mkdir()
    assert project_data_dir(tmp_path) is None  # a folder without dataset_info.json is not a dataset dir
    (tmp_path / "dataset_info" / "dataset_info.json").write_text("{}", encoding="utf-8")
    assert project_data_dir(tmp_path) == "dataset_info"
    monkeypatch.setenv(ENV_DATA_DIR, "/elsewhere/datasets")
    assert project_data_dir(tmp_path) == "/elsewhere/datasets"


def _probe(cwd: Path, **env: str) -> list[str]:
    """Import the stock web UI modules in a fresh interpreter (the plugin activates via its .pth hook)."""
    full_env = {k: v for k, v in os.environ.items() if k != ENV_DATA_DIR}
    full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1].split()


def test_stock_webui_modules_see_the_project_dir(tmp_path: Path) -> None:
    project = _project(tmp_path / "project")
    assert _probe(project) == ["dataset_info"] * 3
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert _probe(outside) == ["data"] * 3  # stock default outside a project


def test_repository_root_is_a_project() -> None:
    info = REPO_ROOT / "dataset_info" / "dataset_info.json"
    assert info.is_file()
    json.loads(info.read_text(encoding="utf-8"))
    assert project_data_dir(REPO_ROOT) in ("dataset_info", os.environ.get(ENV_DATA_DIR, "").strip())
