"""`qwenvl-roi <subcommand>`: one console command, one module per subcommand.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
only when their subcommand is chosen, so `qwenvl-roi --help` and the data commands stay fast
(no torch import unless a command needs a model).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "scan-labels": ("qwenvl_roi.converters.scan_labels", "label distribution and a label_map suggestion"),
    "prepare": ("qwenvl_roi.converters.prepare", "parse, split, draw candidates -> regions_*.jsonl"),
    "build-sft": ("qwenvl_roi.converters.build_sft", "regions_*.jsonl -> LLaMA-Factory sharegpt datasets"),
    "convert": ("qwenvl_roi.converters.convert", "prepare + build-sft in one go"),
    "preview": ("qwenvl_roi.preview.cli", "the converted data drawn as the model will see it (index.html)"),
    "tiny-model": ("qwenvl_roi.tiny_model", "build a tiny random-weight model of any family offline"),
    "predict": ("qwenvl_roi.inference.cli", "per-region abnormal scores for a regions_*.jsonl file"),
    "eval": ("qwenvl_roi.evaluation.cli", "ROI- and image-level metrics, threshold chosen on val"),
    "demo": ("qwenvl_roi.demo.cli", "end-to-end CPU demo on a generated dataset"),
    "webui-config": (
        "qwenvl_roi.webui_config",
        "a recipe as a saved configuration of LLaMA-Factory's web UI",
    ),
    "schema": ("qwenvl_roi.schemas.cli", "JSON Schema of a file qwenvl-roi writes (regions, metrics, ...)"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwenvl-roi", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="<subcommand>", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sp)
            sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: outputs are staged or atomic, so nothing half-written is left
        print(
            f"qwenvl-roi {args.command}: interrupted (outputs land whole or not at all; "
            "predict --boxes resumes where it stopped)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
