"""The .pth start-up hook: a no-op without llamafactory, patches by import path, switchable off."""

from __future__ import annotations

import subprocess
import sys

import pytest

SNIPPET_IDLE = (
    "import sys, json; print(json.dumps({'hook': 'qwenvl_roi.plugin.activation' in sys.modules, "
    "'heavy': sorted(m for m in ('torch', 'transformers', 'llamafactory', 'pydantic', "
    "'qwenvl_roi.plugin.compat') if m in sys.modules)}))"
)
SNIPPET_PATCHED = (
    "import json; import llamafactory.hparams.parser as p, llamafactory.train.trainer_utils as t; "
    "import llamafactory.model.model_utils.visual as v, llamafactory.model.model_utils.quantization as q; "
    "import llamafactory.model.patcher as pa, llamafactory.model.adapter as a; "
    "print(json.dumps([hasattr(f, '__wrapped__') for f in (p._parse_args, p._parse_train_args, "
    "t.create_custom_optimizer, v.patch_target_modules, q.configure_quantization, "
    "pa.configure_quantization, a.patch_target_modules)]))"
)


def _run(code: str, **env: str) -> str:
    import json
    import os

    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_hook_is_loaded_and_imports_nothing_heavy() -> None:
    assert _run(SNIPPET_IDLE) == {"hook": True, "heavy": []}


@pytest.mark.parametrize(("switch", "patched"), [("1", True), ("0", False)])
def test_llamafactory_modules_are_patched_on_import(switch: str, patched: bool) -> None:
    assert _run(SNIPPET_PATCHED, QWENVL_ROI_PLUGIN=switch) == [patched] * 7


def test_registry_entries_resolve() -> None:
    import importlib

    from qwenvl_roi.plugin.activation import PATCHES

    for module_name, target in PATCHES.items():
        assert module_name.startswith("llamafactory.")
        mod, func = target.split(":")
        assert callable(getattr(importlib.import_module(mod), func))
