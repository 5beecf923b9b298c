"""Start-up hook: patch LLaMA-Factory modules by import path, in every process that imports them.

qwenvl_roi_plugin.pth imports this module when any Python interpreter starts. It only puts a small finder at
the front of ``sys.meta_path``; nothing of LLaMA-Factory, torch or transformers is imported here. When one
of the modules named in :data:`PATCHES` is imported (by ``llamafactory-cli``, a torchrun/DeepSpeed rank, the
web UI's training subprocess or export), the module runs as usual and its patch function is called on it
right after. Processes that never import llamafactory only pay for this file.

Before any patch, when the ``llamafactory`` package itself is first imported, compat.py checks LLaMA-Factory's
source for every internal the plugin uses (none of LLaMA-Factory's code runs for that). If one is missing or
has other parameters, the plugin stays off for the whole process, with one message on stderr: another
LLaMA-Factory version keeps working stock instead of failing on import or running half-patched.

To add a patch, add one entry to :data:`PATCHES`: ``"<module imported by LLaMA-Factory>": "<module>:<func>"``;
the function receives the freshly executed module object and changes it only through ``compat.replace``
(the symbol must be listed in ``compat.SYMBOLS``). ``QWENVL_ROI_PLUGIN=0`` turns the plugin off.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
from types import ModuleType
from typing import Any

# {module LLaMA-Factory imports: "qwenvl_roi module:function(module)"}; the function patches the module.
PATCHES: dict[str, str] = {
    "llamafactory.hparams.parser": "qwenvl_roi.plugin.hooks:patch_parser",
    "llamafactory.data.loader": "qwenvl_roi.plugin.cutoff:patch_loader",
    "llamafactory.model.model_utils.quantization": "qwenvl_roi.plugin.hooks:patch_quantization",
    "llamafactory.model.model_utils.visual": "qwenvl_roi.plugin.hooks:patch_visual",
    "llamafactory.train.trainer_utils": "qwenvl_roi.plugin.hooks:patch_trainer_utils",
    "llamafactory.train.sft.workflow": "qwenvl_roi.plugin.verdicts:patch_sft_workflow",
    "llamafactory.webui.common": "qwenvl_roi.plugin.webui:patch_webui_common",
    "llamafactory.webui.interface": "qwenvl_roi.plugin.webui:patch_webui_interface",
}

ENV_SWITCH = "QWENVL_ROI_PLUGIN"
_APPLIED_ATTR = "__qwenvl_roi_patched__"
_PACKAGE = "llamafactory"  # its import runs the compatibility check (compat.PACKAGE)
_lock = threading.RLock()
# None: LLaMA-Factory not checked yet in this process; True: it matches compat.SYMBOLS; False: plugin off
_compatible: bool | None = None


def enabled() -> bool:
    """The plugin is on unless QWENVL_ROI_PLUGIN is 0/false/off/no (for stock comparisons)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in {"0", "false", "off", "no"}


def compatible(package_dirs: list[str] | None = None) -> bool:
    """Whether the installed LLaMA-Factory has everything compat.SYMBOLS lists; checked once per process,
    from the source in ``package_dirs`` (default: the imported package's); prints the one message."""
    global _compatible
    with _lock:
        if _compatible is None:
            if package_dirs is None:
                package_dirs = list(getattr(sys.modules.get(_PACKAGE), "__path__", None) or [])
            from . import compat  # here, not at start-up: processes without LLaMA-Factory never pay for it

            ok, message = compat.check(package_dirs)
            if message:
                print(message, file=sys.stderr, flush=True)
            _compatible = ok
        return _compatible


def apply_patch(module: ModuleType) -> None:
    """Run the registered patch function for ``module`` once (never when LLaMA-Factory did not match)."""
    target = PATCHES.get(module.__name__)
    if target is None or getattr(module, _APPLIED_ATTR, False) or not compatible():
        return
    module_name, func_name = target.split(":", 1)
    patch = getattr(importlib.import_module(module_name), func_name)
    patch(module)
    setattr(module, _APPLIED_ATTR, True)


class _PatchingLoader(importlib.abc.Loader):
    """Delegates to the real loader, then patches the executed module."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        apply_patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for inspect and linecache
        return getattr(self._loader, name)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds only llamafactory and the registered modules, by asking the finders behind it: checks
    compatibility when it finds the package (before any of it runs), wraps the registered modules' loader."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> Any:
        if fullname != _PACKAGE and fullname not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if fullname == _PACKAGE:
                compatible(list(spec.submodule_search_locations or []))
            elif spec.loader is not None and hasattr(spec.loader, "exec_module") and compatible():
                spec.loader = _PatchingLoader(spec.loader)
            return spec
        return None


def install() -> None:
    """Put the finder first on sys.meta_path (idempotent) and patch modules that are already loaded."""
    if not enabled():
        return
    with _lock:
        if not any(isinstance(f, _PatchingFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, _PatchingFinder())
        for name in list(PATCHES):
            module = sys.modules.get(name)
            if module is not None:
                apply_patch(module)


install()
