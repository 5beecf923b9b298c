"""`qwenvl-roi demo`: the README's first command (`make demo`), the whole pipeline on generated data."""

from __future__ import annotations

import argparse
import sys

from qwenvl_roi.families import DEFAULT_TINY_ARCH, TINY_ARCHES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `qwenvl-roi demo`."""
    parser.add_argument(
        "--out", default="runs/demo", help="output folder; everything goes here (default runs/demo)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a scaled-down run (few images, a few steps per phase, test-size model) to check the plumbing",
    )
    parser.add_argument(
        "--arch",
        default=DEFAULT_TINY_ARCH,
        choices=TINY_ARCHES,
        help=f"model architecture of the tiny model, its family's data frame and recipes "
        f"(default {DEFAULT_TINY_ARCH})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args: argparse.Namespace) -> int:
    """Run the demo and print where the report is; a failed step exits 1 with its log tail."""
    from qwenvl_roi.errors import DemoError

    from .pipeline import DemoConfig, run_demo
    from .presets import quick_config

    cfg = quick_config() if args.quick else DemoConfig()
    try:
        report = run_demo(args.out, cfg.model_copy(update={"arch": args.arch}), quiet=args.quiet)
    except DemoError as exc:
        print(f"qwenvl-roi demo: error: {exc}", file=sys.stderr)
        return 1
    m = report["metrics"]
    auc = {k: m[k]["image"].get("auroc") for k in m}
    print(
        f"blind test image AUROC: untrained {auc['untrained']}, trained {auc['trained']}; "
        f"total {report['timings_s']['total']:.0f} s; report: {report['out']}/report.md"
    )
    return 0
