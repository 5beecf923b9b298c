"""Every LLaMA-Factory internal the plugin reads or patches, and the check that they are all there.

Why: the plugin wraps private LLaMA-Factory functions inside the import hook. In another LLaMA-Factory
version one of them may be renamed or take other parameters, and a patch that fails there breaks
``import llamafactory`` itself; one that half-applies trains with some of the plugin's behaviour and not the
rest. So:

- :data:`SYMBOLS` lists each of them (module, attribute, the parameters a wrapper relies on);
- :func:`check` reads LLaMA-Factory's *source* (``ast``; none of its code runs) when the ``llamafactory``
  package is first imported, before any patch; on a mismatch activation.py leaves the plugin off for the whole
  process and prints one message, so stock LLaMA-Factory keeps working;
- patch functions reach LLaMA-Factory only through :func:`get` and :func:`replace`, which refuse a symbol
  that is not listed (tests/plugin/test_compat.py also checks the plugin's code and what it changes).
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: LLaMA-Factory versions this plugin was tested with (pyproject.toml pins the first)
SUPPORTED_VERSIONS: tuple[str, ...] = ("0.9.5",)
PACKAGE = "llamafactory"


class UnlistedSymbolError(LookupError):
    """The plugin reached for a LLaMA-Factory symbol that SYMBOLS does not list (a bug in the plugin)."""


@dataclass(frozen=True)
class Symbol:
    """One LLaMA-Factory internal the plugin relies on."""

    module: str
    #: attribute of the module; ``Class.attribute`` for a method or dataclass field
    name: str
    #: the plugin file that uses it
    used_by: str
    #: for functions: parameter names in order, as written in a def (``*args``, ``*``, ``**kwargs``)
    params: tuple[str, ...] | None = None
    #: the plugin replaces it (only these may go through :func:`replace`)
    patched: bool = False
    #: defined inside a function (``outer.inner``): checked in the source only
    nested: bool = False

    @property
    def path(self) -> str:
        return f"{self.module}.{self.name}"


_PARSER = "llamafactory.hparams.parser"
_LOADER = "llamafactory.data.loader"
_PROCESSOR = "llamafactory.data.processor"
_QUANTIZATION = "llamafactory.model.model_utils.quantization"
_VISUAL = "llamafactory.model.model_utils.visual"
_TRAINER_UTILS = "llamafactory.train.trainer_utils"
_SFT_WORKFLOW = "llamafactory.train.sft.workflow"
_DATA_ARGS = "llamafactory.hparams.data_args"
_MODEL_ARGS = "llamafactory.hparams.model_args"
_FINETUNING_ARGS = "llamafactory.hparams.finetuning_args"
_EXAMPLES = ("self", "examples")


#: LLaMA-Factory's gradient-checkpointing wrapper, which vision_backprop.py recognises by its __name__
CHECKPOINT_WRAPPER = Symbol(
    "llamafactory.model.model_utils.checkpointing",
    "get_custom_gradient_checkpointing_func.custom_gradient_checkpointing_func",
    "vision_backprop.py",
    nested=True,
)


def _fields(module: str, cls: str, used_by: str, names: str) -> tuple[Symbol, ...]:
    return tuple(Symbol(module, f"{cls}.{name}", used_by) for name in names.split())


SYMBOLS: tuple[Symbol, ...] = (
    # replaced by the plugin (activation.PATCHES names the modules)
    Symbol(_PARSER, "_parse_args", "hooks.py", ("parser", "args", "allow_extra_keys"), patched=True),
    Symbol(_PARSER, "_parse_train_args", "hooks.py", ("args",), patched=True),
    Symbol(
        _LOADER,
        "_get_dataset_processor",
        "cutoff.py",
        ("data_args", "stage", "template", "tokenizer", "processor", "do_generate"),
        patched=True,
    ),
    Symbol(
        _LOADER,
        "_get_preprocessed_dataset",
        "cutoff.py",
        ("dataset", "data_args", "training_args", "stage", "template", "tokenizer", "processor", "is_eval"),
        patched=True,
    ),
    Symbol(
        _QUANTIZATION,
        "configure_quantization",
        "hooks.py",
        ("config", "tokenizer", "model_args", "is_trainable", "init_kwargs"),
        patched=True,
    ),
    Symbol(
        _VISUAL,
        "patch_target_modules",
        "hooks.py",
        ("model", "finetuning_args", "target_modules"),
        patched=True,
    ),
    Symbol(
        _TRAINER_UTILS,
        "create_custom_optimizer",
        "hooks.py",
        ("model", "training_args", "finetuning_args"),
        patched=True,
    ),
    Symbol(_SFT_WORKFLOW, "CustomSeq2SeqTrainer", "verdicts.py", patched=True),
    Symbol(_SFT_WORKFLOW, "plot_loss", "verdicts.py", ("save_dictionary", "keys"), patched=True),
    Symbol("llamafactory.webui.common", "DEFAULT_DATA_DIR", "webui.py", patched=True),
    Symbol("llamafactory.webui.interface", "run_web_ui", "webui.py", (), patched=True),
    Symbol("llamafactory.webui.interface", "run_web_demo", "webui.py", (), patched=True),
    # read by the plugin
    Symbol(_PARSER, "read_args", "hooks.py", ("args",)),
    Symbol(_PROCESSOR, "SupervisedDatasetProcessor", "cutoff.py"),
    Symbol(_PROCESSOR, "PackedSupervisedDatasetProcessor", "cutoff.py"),
    Symbol(
        _PROCESSOR,
        "SupervisedDatasetProcessor._encode_data_example",
        "cutoff.py",
        ("self", "prompt", "response", "system", "tools", "images", "videos", "audios"),
    ),
    Symbol(_PROCESSOR, "SupervisedDatasetProcessor.preprocess_dataset", "cutoff.py", _EXAMPLES),
    Symbol(_PROCESSOR, "PackedSupervisedDatasetProcessor.preprocess_dataset", "cutoff.py", _EXAMPLES),
    *_fields(_PROCESSOR, "SupervisedDatasetProcessor", "cutoff.py", "template tokenizer processor data_args"),
    Symbol(_VISUAL, "COMPOSITE_MODELS", "selection.py"),
    *_fields(_VISUAL, "CompositeModel", "selection.py", "projector_keys vision_model_keys"),
    Symbol("llamafactory.data.template", "TEMPLATES", "dataset_match.py"),
    Symbol("llamafactory.data.template", "ReasoningTemplate", "dataset_match.py"),
    Symbol("llamafactory.extras.logging", "get_logger", "optim.py, verdicts.py", ("name",)),
    Symbol(
        "llamafactory.extras.logging", "info_rank0", "optim.py, verdicts.py", ("self", "*args", "**kwargs")
    ),
    CHECKPOINT_WRAPPER,
    # fields of the parsed arguments the hooks read
    *_fields(
        _DATA_ARGS,
        "DataArguments",
        "cutoff.py, dataset_match.py, verdicts.py",
        "cutoff_len streaming template dataset eval_dataset dataset_dir enable_thinking val_size "
        "eval_on_each_dataset",
    ),
    *_fields(
        _MODEL_ARGS,
        "ModelArguments",
        "hooks.py, dataset_match.py, verdicts.py",
        "model_name_or_path image_max_pixels image_min_pixels quantization_bit quantization_method "
        "trust_remote_code cache_dir compute_dtype",
    ),
    *_fields(
        _FINETUNING_ARGS,
        "FinetuningArguments",
        "hooks.py, label_logits.py",
        "finetuning_type loraplus_lr_ratio additional_target use_galore use_apollo use_badam use_adam_mini "
        "use_muon use_dft_loss use_eaft_loss use_asft_loss",
    ),
)

_BY_PATH: dict[tuple[str, str], Symbol] = {(s.module, s.name): s for s in SYMBOLS}


# ---------------------------------------------------------------------------------------------------------
# The patch helpers: the only way the plugin reaches LLaMA-Factory


def _listed(module: str, name: str, patching: bool) -> Symbol:
    sym = _BY_PATH.get((module, name))
    if sym is None:
        raise UnlistedSymbolError(
            f"{module}.{name} is not listed in qwenvl_roi/plugin/compat.py:SYMBOLS; list it (with the "
            "parameters the plugin relies on) so that another LLaMA-Factory version is checked for it"
        )
    if patching and not sym.patched:
        raise UnlistedSymbolError(f"{sym.path} is listed read-only in compat.SYMBOLS; mark it patched=True")
    return sym


def get(module: ModuleType | str, name: str) -> Any:
    """A listed attribute of a LLaMA-Factory module (a module name is imported first)."""
    mod = importlib.import_module(module) if isinstance(module, str) else module
    _listed(mod.__name__, name, patching=False)
    return getattr(mod, name)


def replace(module: ModuleType, name: str, value: Any) -> None:
    """Set a listed, patchable attribute of a LLaMA-Factory module."""
    _listed(module.__name__, name, patching=True)
    setattr(module, name, value)


def signature_names(func: Callable[..., Any]) -> tuple[str, ...]:
    """Parameter names as :attr:`Symbol.params` writes them, from the live function (inspect.signature)."""
    import inspect

    names: list[str] = []
    star = False
    for p in inspect.signature(func).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            names.append("*" + p.name)
            star = True
        elif p.kind is p.VAR_KEYWORD:
            names.append("**" + p.name)
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                names.append("*")
                star = True
            names.append(p.name)
    return tuple(names)


# ---------------------------------------------------------------------------------------------------------
# The check: LLaMA-Factory's source, parsed, never imported (it runs before any LLaMA-Factory code)


def _ast_names(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args)]
    if a.vararg is not None:
        names.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        names.append("*")
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg is not None:
        names.append("**" + a.kwarg.arg)
    return tuple(names)


def _type_checking_only(node: ast.stmt) -> bool:
    """``if TYPE_CHECKING:``: its imports are not there at run time."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that bind names at this level: into if/try/with/for blocks, not into defs."""
    for node in body:
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from _statements(node.orelse)
            continue
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _statements([c for c in getattr(node, field, None) or [] if isinstance(c, ast.stmt)])
        for handler in getattr(node, "handlers", None) or []:
            yield from _statements(handler.body)


def _binds(node: ast.stmt, name: str) -> bool:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name == name
    targets = node.targets if isinstance(node, ast.Assign) else []
    if isinstance(node, ast.AnnAssign):
        targets = [node.target]
    for target in targets:
        for t in ast.walk(target):
            if isinstance(t, ast.Name) and t.id == name:
                return True
    return False


def _inside(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


class _Source:
    """LLaMA-Factory's modules parsed from their files, to look names up the way Python binds them."""

    def __init__(self, package_dirs: Sequence[str]) -> None:
        self.dirs = [Path(d) for d in package_dirs]
        self._parsed: dict[str, tuple[ast.Module, bool] | None] = {}

    def module(self, name: str) -> tuple[ast.Module, bool] | None:
        """(syntax tree, is a package) of a llamafactory module; None when it has no source file."""
        if name not in self._parsed:
            self._parsed[name] = None
            parts = name.split(".")[1:]
            for root in self.dirs:
                base = root.joinpath(*parts)
                candidates = [(base / "__init__.py", True)]
                if parts:
                    candidates.append((base.parent / f"{parts[-1]}.py", False))
                found = next(((p, pkg) for p, pkg in candidates if p.is_file()), None)
                if found is not None:
                    self._parsed[name] = (ast.parse(found[0].read_bytes(), str(found[0])), found[1])
                    break
        return self._parsed[name]

    def top(self, module: str, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
        """(module that defines it, its node) for a module-level name, following imports inside llamafactory;
        an import from outside llamafactory counts as present (its node is the import)."""
        parsed = self.module(module)
        if parsed is None or depth > 20:
            return None
        tree, is_package = parsed
        found: tuple[str, ast.AST] | None = None
        for node in _statements(tree.body):
            if _binds(node, name):
                found = (module, node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name.split(".")[0]) == name:
                        found = (alias.name, node)  # a module object: present
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == name or alias.name == "*":
                        source = self._import_source(module, is_package, node)
                        if alias.name == "*":
                            hit = self.top(source, name, depth + 1) if _inside(source) else None
                            found = hit or found
                        elif not _inside(source):
                            found = (source, node)
                        else:
                            found = self.top(source, alias.name, depth + 1) or self._submodule(
                                f"{source}.{alias.name}"
                            )
        if found is None and is_package:
            found = self._submodule(f"{module}.{name}")
        return found

    def _submodule(self, name: str) -> tuple[str, ast.AST] | None:
        parsed = self.module(name)
        return (name, parsed[0]) if parsed is not None else None

    @staticmethod
    def _import_source(module: str, is_package: bool, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = module.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        return ".".join(base + ([node.module] if node.module else []))

    def member(self, module: str, owner: ast.AST, name: str, depth: int = 0) -> tuple[str, ast.AST] | None:
        """An attribute of a class (its body, then its llamafactory bases), or a def nested in a function."""
        if isinstance(owner, ast.FunctionDef | ast.AsyncFunctionDef):
            inner = [n for n in ast.walk(owner) if isinstance(n, ast.FunctionDef) and n.name == name]
            return (module, inner[0]) if inner else None
        if not isinstance(owner, ast.ClassDef) or depth > 20:
            return None
        for node in _statements(owner.body):
            if _binds(node, name):
                return module, node
        for base in owner.bases:
            if isinstance(base, ast.Name):
                resolved = self.top(module, base.id)
                if resolved is not None:
                    hit = self.member(*resolved, name, depth + 1)
                    if hit is not None:
                        return hit
        return None

    def find(self, sym: Symbol) -> tuple[str, ast.AST] | None:
        first, *rest = sym.name.split(".")
        found = self.top(sym.module, first)
        for part in rest:
            if found is None:
                return None
            found = self.member(*found, part)
        return found


def problems(package_dirs: Sequence[str]) -> list[str]:
    """What the LLaMA-Factory in these folders lacks of SYMBOLS: one line each, starting with its path."""
    source = _Source(package_dirs)
    found: list[str] = []
    for sym in SYMBOLS:
        hit = source.find(sym)
        if hit is None:
            found.append(f"{sym.path} is missing (used by plugin/{sym.used_by})")
            continue
        node = hit[1]
        if sym.params is None or isinstance(node, ast.ImportFrom):
            continue
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append(f"{sym.path} is no longer a function (used by plugin/{sym.used_by})")
            continue
        got, want = ", ".join(_ast_names(node)), ", ".join(sym.params)
        if got != want:
            found.append(f"{sym.path} takes ({got}) where plugin/{sym.used_by} expects ({want})")
    return found


def installed_version(package_dirs: Sequence[str]) -> str:
    """LLaMA-Factory's VERSION from the source that will be imported (extras/env.py), else its metadata."""
    parsed = _Source(package_dirs).module(f"{PACKAGE}.extras.env")
    if parsed is not None:
        for node in parsed[0].body:
            value = node.value if isinstance(node, ast.Assign) and _binds(node, "VERSION") else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                return value.value
    try:
        from importlib.metadata import version

        return version(PACKAGE)
    except Exception:
        return "unknown"


def check(package_dirs: Sequence[str]) -> tuple[bool, str | None]:
    """(whether the plugin may patch, the one message for stderr or None), for the llamafactory package in
    these folders. Never raises: a failure of the check itself turns the plugin off, not LLaMA-Factory."""
    supported = " / ".join(SUPPORTED_VERSIONS)
    try:
        found, version = problems(package_dirs), installed_version(package_dirs)
    except Exception as err:  # an unreadable or unparsable file: say so, keep LLaMA-Factory importable
        found, version = [f"the compatibility check failed: {type(err).__name__}: {err}"], "unknown"
    where = ", ".join(str(d) for d in package_dirs) or "?"
    if found:
        return False, (
            f"qwenvl-roi: plugin OFF in this process (no patch applied; stock LLaMA-Factory runs): "
            f"LLaMA-Factory {version} at {where} differs from the supported LLaMA-Factory {supported}: "
            + "; ".join(found)
            + ". A recipe with roi_ keys therefore fails with LLaMA-Factory's unknown-key error ('Some keys "
            f"are not used by the HfArgumentParser'). Install llamafactory=={SUPPORTED_VERSIONS[0]} (`pip "
            "install -e .` pins it) or a qwenvl-roi that supports this version; QWENVL_ROI_PLUGIN=0 hides "
            "this message."
        )
    if version not in SUPPORTED_VERSIONS:
        return True, (
            f"qwenvl-roi: LLaMA-Factory {version} at {where} is not a version qwenvl-roi was tested with "
            f"({supported}); every LLaMA-Factory internal the plugin uses is present with the expected "
            "parameters, so the plugin is on"
        )
    return True, None
