"""`qwenvl-roi convert` = prepare + build-sft; ``convert(config)`` is the Python entry the demo calls."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import build_sft as build_sft_mod
from . import prepare as prepare_mod
from .config import ConvertError, DataConfig, coerce_config, load_data_config, report_error
from .prepare import StrictModeError
from .runtime import paused_gc

__all__ = ["ConvertError", "DataConfig", "StrictModeError", "convert", "load_data_config"]


def convert(
    config: DataConfig | str | Path | dict, strict: bool | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Run prepare then build-sft; returns {"prepare": report, "build_sft": summary}.

    Raises ConvertError on bad config or input, StrictModeError (a ConvertError) when strict finds problems.
    """
    cfg = coerce_config(config)
    with paused_gc():
        result = prepare_mod.prepare(cfg, strict=strict, progress=progress)
        summary = build_sft_mod.build_sft(cfg, progress=progress, samples=result.samples)
    return {"prepare": result.report, "build_sft": summary}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="data.yaml (see configs/data.yaml)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any problem is found")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_data_config(args.config)
        with paused_gc():
            result = prepare_mod.prepare(cfg, strict=True if args.strict else None)
            print("\n".join(prepare_mod.summary_lines(result)))
            summary = build_sft_mod.build_sft(cfg, samples=result.samples)
    except ConvertError as exc:
        return report_error(exc)
    print("\n".join(build_sft_mod.summary_lines(summary)))
    return 0
