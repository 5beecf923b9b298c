"""`qwenvl-roi preview --config data.yaml --out DIR`: look at the converted data before training on it.

Reads the converters' outputs in the config's out_dir (run `qwenvl-roi convert` first) and writes
``DIR/index.html`` (static, opens from disk): qwenvl_roi/preview/page.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qwenvl_roi.converters.split import SPLITS
from qwenvl_roi.outputs import legacy_json

PREVIEW_LEGACY = legacy_json("preview.json", "index", "stale_boxes")  # a preview before the marker file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="data.yaml the data was converted with")
    parser.add_argument("--out", required=True, help="output folder (index.html, img/, preview.json)")
    parser.add_argument("--split", choices=SPLITS, default=None, help="only this split (default: all)")
    parser.add_argument(
        "--limit", type=int, default=1000, help="samples shown (annotation problems first; default 1000)"
    )
    parser.add_argument("--page-size", type=int, default=100, help="samples per page")
    parser.add_argument(
        "--max-side", type=int, default=512, help="thumbnail size bound (pixels, longer side)"
    )
    parser.add_argument("--format", choices=["jpeg", "png"], default="jpeg", help="thumbnail file format")


def run(args: argparse.Namespace) -> int:
    """Entry point; bad input -> one clear line on stderr and exit code 2."""
    from pydantic import ValidationError

    from qwenvl_roi.converters.config import load_data_config, report_error
    from qwenvl_roi.errors import ConvertError, OutputError
    from qwenvl_roi.outputs import claim, staged
    from qwenvl_roi.picture_pages import PageOptions

    from .page import write_preview
    from .samples import load_preview

    try:
        options = PageOptions(
            limit=args.limit, page_size=args.page_size, max_side=args.max_side, image_format=args.format
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + {"image_format": "format"}.get(str(err["loc"][0]), str(err["loc"][0])).replace("_", "-")
        print(f"qwenvl-roi preview: error: {flag}: {err['msg']}", file=sys.stderr)
        return 2
    try:
        claim(args.out, "preview", legacy=PREVIEW_LEGACY)  # refused before the work, not after
        data = load_preview(load_data_config(args.config), args.config, args.split)
        with staged(args.out, "preview", legacy=PREVIEW_LEGACY) as stage:
            summary = write_preview(data, args.config, stage, options, in_place=True)
    except (ConvertError, OutputError) as exc:
        return report_error(exc)
    index = Path(args.out) / summary["index"]
    print(
        f"preview: {summary['shown']} of {summary['samples']} samples "
        f"({summary['with_problems']} with annotation problems, shown first) -> {index}"
    )
    for w in summary["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0
