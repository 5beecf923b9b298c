"""The LLaMA-Factory compatibility layer: the list of internals is true today, and when one is missing or
changed the plugin stays off for the process (one message, nothing patched) while stock LLaMA-Factory runs."""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from qwenvl_roi.plugin import compat
from qwenvl_roi.plugin.activation import PATCHES

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "plugin"
LF_DIR = Path(sysconfig.get_paths()["purelib"]) / "llamafactory"
CLI = Path(sys.executable).with_name("llamafactory-cli")
FAKE_VERSION = "0.9.99"


def _resolve(sym: compat.Symbol) -> Any:
    """The listed object in the imported LLaMA-Factory; dataclass fields without a default count too."""
    obj: Any = importlib.import_module(sym.module)
    for part in sym.name.split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif isinstance(obj, type) and dataclasses.is_dataclass(obj):
            assert part in {f.name for f in dataclasses.fields(obj)}, sym.path
            obj = None
        else:
            raise AssertionError(f"{sym.path}: no {part!r} in the installed LLaMA-Factory")
    return obj


def test_listed_symbols_exist_in_the_installed_llamafactory() -> None:
    from llamafactory.extras.env import VERSION

    assert VERSION in compat.SUPPORTED_VERSIONS
    for sym in compat.SYMBOLS:
        if sym.nested:  # a function defined inside another one: not reachable by getattr, checked below
            continue
        obj = _resolve(sym)
        if sym.params is not None:
            assert compat.signature_names(obj) == sym.params, sym.path
    # vision_backprop.py recognises LLaMA-Factory's checkpointing wrapper by this name
    from llamafactory.model.model_utils.checkpointing import get_custom_gradient_checkpointing_func

    wrapper = get_custom_gradient_checkpointing_func(functools.partial(lambda f, *a: f(*a)))
    nested = [s for s in compat.SYMBOLS if s.nested]
    assert [s.name.rsplit(".", 1)[1] for s in nested] == [wrapper.__name__]


def test_flags_the_hooks_read_are_listed() -> None:
    """hooks.py and label_logits.py read these FinetuningArguments flags with getattr(..., False): a renamed
    flag would silently turn a check off, so each must be a listed field."""
    from qwenvl_roi.plugin import hooks, label_logits, vision_backprop

    listed = {s.name for s in compat.SYMBOLS if s.module == "llamafactory.hparams.finetuning_args"}
    for flag in hooks._OWN_OPTIMIZERS + label_logits._FULL_LOGIT_LOSSES:
        assert f"FinetuningArguments.{flag}" in listed, flag
    assert vision_backprop._LF_CHECKPOINT_WRAPPER == "custom_gradient_checkpointing_func"


def test_static_check_of_the_installed_llamafactory_finds_nothing() -> None:
    assert compat.problems([str(LF_DIR)]) == []
    assert compat.installed_version([str(LF_DIR)]) in compat.SUPPORTED_VERSIONS
    assert compat.check([str(LF_DIR)]) == (True, None)


def lf_copy(root: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """LLaMA-Factory as another version would ship it: a tree of links to the installed files, with the
    edited files ({path under llamafactory/: (old text, new text)}) written for real. Returns the folder
    to put on PYTHONPATH."""
    dst = root / "llamafactory"
    shutil.copytree(LF_DIR, dst, copy_function=os.symlink)
    version = {"extras/env.py": ('VERSION = "0.9.5"', f'VERSION = "{FAKE_VERSION}"')}
    for rel, (old, new) in {**version, **edits}.items():
        path = dst / rel
        text = path.read_text(encoding="utf-8")
        assert old in text, (rel, old)
        path.unlink()
        path.write_text(text.replace(old, new), encoding="utf-8")
        for cached in (path.parent / "__pycache__").glob(f"{path.stem}.*.pyc"):
            cached.unlink()
    return root


RENAMED_PROCESSOR = {"data/loader.py": ("_get_dataset_processor(", "_get_dataset_processor_v2(")}
CHANGED_SIGNATURE = {
    "hparams/parser.py": (
        "def _parse_train_args(args: dict[str, Any] | list[str] | None = None)",
        "def _parse_train_args(args: dict[str, Any] | list[str] | None = None, strict: bool = True)",
    )
}
REMOVED_FIELD = {"hparams/data_args.py": ("    cutoff_len: int = field(", "    max_length: int = field(")}


@pytest.mark.parametrize(
    ("edits", "named"),
    [
        (RENAMED_PROCESSOR, "llamafactory.data.loader._get_dataset_processor"),
        (CHANGED_SIGNATURE, "llamafactory.hparams.parser._parse_train_args"),
        (REMOVED_FIELD, "llamafactory.hparams.data_args.DataArguments.cutoff_len"),
    ],
    ids=["renamed", "signature", "field"],
)
def test_static_check_names_what_another_version_changed(
    tmp_path: Path, edits: dict[str, tuple[str, str]], named: str
) -> None:
    dirs = [str(lf_copy(tmp_path, edits) / "llamafactory")]
    found = compat.problems(dirs)
    assert len(found) == 1 and found[0].startswith(named), found
    ok, message = compat.check(dirs)
    assert not ok and message is not None
    for part in (named, FAKE_VERSION, *compat.SUPPORTED_VERSIONS, "OFF", "unknown-key"):
        assert part in message, (part, message)


def test_another_version_with_everything_in_place_keeps_the_plugin_on(tmp_path: Path) -> None:
    ok, message = compat.check([str(lf_copy(tmp_path, {}) / "llamafactory")])
    assert ok and message is not None and FAKE_VERSION in message and "plugin is on" in message


def test_a_failing_check_turns_the_plugin_off_not_llamafactory(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(package_dirs: list[str]) -> list[str]:
        raise PermissionError("denied")

    monkeypatch.setattr(compat, "problems", unreadable)
    ok, message = compat.check([str(LF_DIR)])
    assert not ok and message is not None and "PermissionError: denied" in message and "OFF" in message


def test_patch_helpers_refuse_unlisted_symbols() -> None:
    import llamafactory.hparams.parser as parser

    assert compat.get(parser, "_parse_train_args") is parser._parse_train_args
    with pytest.raises(compat.UnlistedSymbolError, match="_parse_infer_args"):
        compat.get(parser, "_parse_infer_args")
    with pytest.raises(compat.UnlistedSymbolError, match="read_args"):  # listed, but only read
        compat.replace(parser, "read_args", lambda args=None: args)
    assert not hasattr(parser.read_args, "__wrapped__")


def test_every_patched_module_is_registered_and_listed() -> None:
    assert set(PATCHES) == {s.module for s in compat.SYMBOLS if s.patched}


def test_plugin_code_reaches_llamafactory_only_through_compat() -> None:
    """No `import llamafactory...` and no assignment to a patched module's attributes outside compat.py."""
    offenders = []
    for path in sorted(PLUGIN.glob("*.py")):
        if path.name == "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n == "llamafactory" or n.startswith("llamafactory.") for n in names):
                    offenders.append(f"{path.name}:{node.lineno} imports llamafactory")
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "module":
                    offenders.append(f"{path.name}:{node.lineno} assigns module.{target.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Name) and first.id == "module":
                    second = node.args[1] if len(node.args) > 1 else None
                    if not (isinstance(second, ast.Name) and second.id == "_APPLIED_ATTR"):
                        offenders.append(f"{path.name}:{node.lineno} setattr(module, ...)")
    assert offenders == []


# each module attribute as a string: a value's repr, else its type, name and the file its code is in (a
# functools.wraps wrapper keeps the name of what it wraps, not the file)
MODULE_STATE = """
import importlib, json, sys

def describe(v):
    if isinstance(v, str | int | float | bool):
        return repr(v)
    code = getattr(v, "__code__", None)
    return ":".join((type(v).__name__, str(getattr(v, "__module__", "")), str(getattr(v, "__qualname__", "")),
                     getattr(code, "co_filename", ""), str(hasattr(v, "__wrapped__"))))

out = {}
for name in sys.argv[1:]:
    mod = importlib.import_module(name)
    out[name] = {k: describe(v) for k, v in vars(mod).items() if not k.startswith("__")}
print(json.dumps(out))
"""


def _module_state(plugin: str) -> dict[str, dict[str, str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QWENVL_ROI_PLUGIN": plugin}
    env["QWENVL_ROI_DATA_DIR"] = "roi_data"  # the web UI's data-dir patch applies outside a project too
    proc = subprocess.run(
        [sys.executable, "-c", MODULE_STATE, *PATCHES],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_plugin_changes_exactly_the_listed_symbols() -> None:
    """Every patched module with the plugin on vs off: the attributes that differ are the listed ones."""
    on, off = _module_state("1"), _module_state("0")
    changed = {f"{m}.{k}" for m in on for k in set(on[m]) | set(off[m]) if on[m].get(k) != off[m].get(k)}
    assert changed == {s.path for s in compat.SYMBOLS if s.patched}


SIMULATION = """
import json, sys
import llamafactory
import llamafactory.hparams.parser as p, llamafactory.data.loader as l, llamafactory.train.trainer_utils as t
import llamafactory.model.model_utils.visual as v, llamafactory.model.model_utils.quantization as q
import llamafactory.model.adapter as a, llamafactory.model.patcher as pa
from llamafactory.hparams import get_train_args

funcs = [p._parse_args, p._parse_train_args, l._get_preprocessed_dataset, t.create_custom_optimizer,
         v.patch_target_modules, q.configure_quantization, a.patch_target_modules, pa.configure_quantization]
try:
    get_train_args({"model_name_or_path": "m", "output_dir": sys.argv[1], "roi_train_projector": True})
    error = None
except ValueError as err:
    error = str(err)
print(json.dumps({"file": llamafactory.__file__, "version": llamafactory.__version__, "error": error,
                  "wrapped": [hasattr(f, "__wrapped__") for f in funcs],
                  "marked": [getattr(m, "__qwenvl_roi_patched__", False) for m in (p, l, t, v, q)]}))
"""


def _env(pythonpath: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(pythonpath), "QWENVL_ROI_PLUGIN": "1"}


def _one_message(stderr: str, named: str) -> str:
    lines = [line for line in stderr.splitlines() if "qwenvl-roi" in line]
    assert len(lines) == 1, stderr[-3000:]
    for part in (named, FAKE_VERSION, *compat.SUPPORTED_VERSIONS, "OFF", "unknown-key"):
        assert part in lines[0], (part, lines[0])
    return lines[0]


def test_a_missing_symbol_turns_the_plugin_off_and_llamafactory_works(tmp_path: Path) -> None:
    root = lf_copy(tmp_path / "lf", RENAMED_PROCESSOR)
    proc = subprocess.run(
        [sys.executable, "-c", SIMULATION, str(tmp_path / "out")],
        env=_env(root),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(root)) and result["version"] == FAKE_VERSION
    assert result["wrapped"] == [False] * 8 and result["marked"] == [False] * 5  # not one patch
    # a recipe with roi_ keys gets LLaMA-Factory's own unknown-key error
    assert result["error"] == "Some keys are not used by the HfArgumentParser: ['roi_train_projector']"
    _one_message(proc.stderr, "llamafactory.data.loader._get_dataset_processor")


def test_llamafactory_cli_runs_stock_when_a_signature_changed(tmp_path: Path) -> None:
    root = lf_copy(tmp_path / "lf", CHANGED_SIGNATURE)
    proc = subprocess.run(
        [str(CLI), "version"], env=_env(root), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"version {FAKE_VERSION}" in proc.stdout
    message = _one_message(proc.stderr, "llamafactory.hparams.parser._parse_train_args")
    assert "strict" in message  # says how the parameters changed
