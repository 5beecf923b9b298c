"""`qwenvl-roi convert` = prepare + build-sft; ``convert(config)`` is the Python entry the demo calls."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qwenvl_roi.errors import ConvertError, OutputError

from . import build_sft as build_sft_mod
from . import prepare as prepare_mod
from .config import DataConfig, coerce_config, load_data_config, report_error
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
    result, summary = _convert(cfg, strict, progress)
    return {"prepare": result.report, "build_sft": summary}


def _convert(
    cfg: DataConfig, strict: bool | None, progress: bool | None
) -> tuple[prepare_mod.PrepareResult, dict[str, Any]]:
    """prepare and build-sft into one staging folder: out_dir gets the whole new set or keeps the old one;
    dataset_info.json is updated (under its lock) once the set is in place."""
    with paused_gc():
        build_sft_mod.check_dataset_info(cfg)  # before the work, not after the set is in place
        with prepare_mod.strict_report(cfg), prepare_mod.staged_out_dir(cfg) as stage:
            result = prepare_mod.prepare_into(cfg, stage, strict=strict, progress=progress)
            counts, meta = build_sft_mod.build_into(cfg, stage, progress, samples=result.samples)
        info, warnings = build_sft_mod.merge_dataset_info(cfg, meta)
    summary = {
        "records": counts,
        "dataset_info": str(info),
        "out_dir": str(cfg.out_dir),
        "warnings": warnings,
    }
    return result, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="data.yaml (see configs/data.yaml)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero when any problem is found")


def run(args: argparse.Namespace) -> int:
    try:
        result, summary = _convert(load_data_config(args.config), True if args.strict else None, None)
    except (ConvertError, OutputError) as exc:
        return report_error(exc)
    print("\n".join(prepare_mod.summary_lines(result)))
    print("\n".join(build_sft_mod.summary_lines(summary)))
    return 0
