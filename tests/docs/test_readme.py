"""Every command in the READMEs is accepted by the real parsers and exercised by a test, so docs cannot drift.

Each shell line in a ```bash block is checked according to its program:
- `make T`: the Makefile has target T (and `demo`/`test` run what the README says they run);
- `qwenvl-roi ...`: the real CLI parser accepts the flags, and some test runs that subcommand;
- `llamafactory-cli train|export <yaml> k=v ...`: the YAML exists, every key of the merged config is a real
  LLaMA-Factory argument or a plugin `roi_` key, referenced files exist, and a test runs that recipe;
- `llamafactory-cli webui`: the browser test runs it;
- `.venv/bin/pytest ...`: test paths and markers exist.
The Python snippet is executed by tests/demo/test_demo_pipeline.py on the demo's trained model.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
READMES = ("README.md", "README.zh-CN.md")
ENV_ASSIGN = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _commands(name: str) -> list[list[str]]:
    text = (ROOT / name).read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


def _all_commands() -> list[tuple[str, list[str]]]:
    return [(name, argv) for name in READMES for argv in _commands(name)]


@functools.cache
def _tests_text() -> str:
    """The test sources, plus the demo pipeline that tests/demo runs end to end (it runs every recipe)."""
    files = [*(ROOT / "tests").rglob("*.py"), ROOT / "qwenvl_roi" / "demo" / "pipeline.py"]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def _strip_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while argv and ENV_ASSIGN.match(argv[0]):
        key, _, value = argv[0].partition("=")
        env[key] = value
        argv = argv[1:]
    return env, argv


def test_both_readmes_show_the_same_commands() -> None:
    en, zh = (_commands(name) for name in READMES)
    assert en == zh
    assert en[:2] == [["make", "demo"], ["make", "test"]]  # quick start: exactly these two


@functools.cache
def _llamafactory_keys() -> frozenset[str]:
    import dataclasses

    from llamafactory.hparams.parser import _INFER_ARGS, _TRAIN_ARGS
    from qwenvl_roi.plugin.settings import RoiSettings

    keys = {f.name for cls in (*_TRAIN_ARGS, *_INFER_ARGS) for f in dataclasses.fields(cls)}
    return frozenset(keys | set(RoiSettings.model_fields))


@pytest.mark.parametrize(
    ("readme", "argv"), _all_commands(), ids=lambda x: " ".join(x)[:70] if isinstance(x, list) else x
)
def test_command(readme: str, argv: list[str]) -> None:
    env, argv = _strip_env(argv)
    program, args = argv[0], argv[1:]
    if program == "make":
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        targets = [a for a in args if "=" not in a]
        for target in targets:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), target
        if targets == ["demo"]:  # what make really runs (-n: print only), with the README's variables
            dry = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True)
            arch = dict(a.split("=", 1) for a in args if "=" in a).get("ARCH", "qwen2_5_vl")
            out = "runs/demo" if arch == "qwen2_5_vl" else f"runs/demo-{arch}"
            assert f"qwenvl-roi demo --out {out} --arch {arch}" in dry.stdout, dry.stdout
        if args == ["test"]:
            assert "pytest" in makefile and "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    elif program == "qwenvl-roi":
        from qwenvl_roi.cli import build_parser

        parsed = build_parser(args).parse_args(args)  # SystemExit on an unknown flag
        assert parsed.command == args[0]
        assert f'"{args[0]}"' in _tests_text(), f"no test runs `qwenvl-roi {args[0]}`"
    elif program == "torchrun":  # torchrun [its flags] -m qwenvl_roi <subcommand> ...
        assert args[args.index("-m") + 1] == "qwenvl_roi", args
        sub = args[args.index("-m") + 2 :]
        from qwenvl_roi.cli import build_parser

        assert build_parser(sub).parse_args(sub).command == sub[0]
        assert '"torchrun"' in _tests_text() and '"qwenvl_roi"' in _tests_text(), "no test runs it"
    elif program == "llamafactory-cli":
        _check_llamafactory(env, args)
    elif program.endswith("pytest"):
        for arg in args:
            if arg.startswith("tests"):
                assert (ROOT / arg).exists(), arg
        if "-m" in args:
            expr = args[args.index("-m") + 1]
            markers = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
            for word in re.findall(r"[a-z_]+", expr):
                assert word in ("not", "and", "or") or f'"{word}:' in markers, word
    else:
        pytest.fail(f"{readme}: no check for the command {program!r}; add one here")


def _check_llamafactory(env: dict[str, str], args: list[str]) -> None:
    verb = args[0]
    if verb == "webui":
        assert "llamafactory-cli" in (ROOT / "tests/webui/test_webui_browser.py").read_text(encoding="utf-8")
        return
    assert verb in ("train", "export"), verb
    recipe = ROOT / args[1]
    assert recipe.is_file(), recipe
    config = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    for override in args[2:]:
        key, sep, value = override.partition("=")
        assert sep, override
        config[key] = value
        if key == "deepspeed":
            assert (ROOT / value).is_file(), value
    unknown = set(config) - _llamafactory_keys()
    assert not unknown, f"{args[1]}: not LLaMA-Factory or roi_ keys: {sorted(unknown)}"
    assert args[1].split("/")[-1] in _tests_text(), f"no test runs {args[1]}"
    if env.get("FORCE_TORCHRUN"):
        assert "FORCE_TORCHRUN" in _tests_text(), "no test runs distributed training"
