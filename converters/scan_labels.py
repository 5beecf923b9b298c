"""`qwenvl-roi scan-labels`: label distribution of the txt annotations and a ready-to-paste label_map block.

With ``--out X.json`` the JSON goes to the file, a bar chart of the merged labels to ``X.png``, and a
summary plus the YAML block to stdout; without it stdout
carries only the JSON (machine-readable) and the YAML block goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import ConvertError, report_error
from .label_chart import write_label_chart
from .labels import count_labels, scan_summary
from .names import shown
from .parse import LineParser, Problem, parse_txt
from .prepare import walk_files
from .write import dumps, write_json


def scan_labels(
    abnormal_dir: str | Path, column_delim: str = ";", progress: bool | None = None
) -> dict[str, Any]:
    """Boxes and images per raw label, the merged variant groups, the label_map YAML and any problems."""
    root = Path(abnormal_dir)
    if not root.is_dir():
        raise ConvertError(f"--abnormal-dir {root} does not exist or is not a folder")
    if not column_delim or not column_delim.strip():
        raise ConvertError("--column-delim must be a visible character such as ';'")
    parser = LineParser(column_delim)
    problems: list[Problem] = []  # the walk's first (symlink loops, folders linked twice)
    _, txts = walk_files(root, problems)
    pairs: list[tuple[str, str]] = []
    disable = None if progress is None else not progress
    for rel in tqdm(txts, desc="scan-labels", unit="txt", disable=disable):
        # a non-UTF-8 name (GBK from a Windows zip) is opened as is and reported as its \xNN form
        parsed = parse_txt(root / rel, f"{root.as_posix()}/{shown(rel)}", None, parser)
        problems += parsed.problems
        pairs += [(b.label, rel) for b in parsed.boxes]
    boxes, images = count_labels(pairs)
    summary = scan_summary(boxes, images)
    return {
        "abnormal_dir": root.as_posix(),
        "txt_files": len(txts),
        "boxes": sum(boxes.values()),
        **summary,
        "problems": [p.as_dict() for p in problems],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--abnormal-dir", required=True, help="folder of abnormal images and their .txt files"
    )
    parser.add_argument(
        "--column-delim", default=";", help="column delimiter (full-width '；' is always accepted)"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="write the JSON here and the bar chart beside it as .png (default: print the JSON)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        result = scan_labels(args.abnormal_dir, args.column_delim)
    except ConvertError as exc:
        return report_error(exc)
    if args.out:
        chart = Path(args.out).with_suffix(".png")
        result["chart"] = chart.name
        result["chart_legend"] = write_label_chart(result["merged"], chart)
        write_json(args.out, result)
        for row in result["merged"]:
            variants = ", ".join(row["variants"])
            print(f"{row['label']}: {row['boxes']} boxes in {row['images']} images  [{variants}]")
        if result["problems"]:
            print(f"{len(result['problems'])} problem line(s); see {args.out}")
        print(f"wrote {args.out} and the bar chart {chart}\n\n# paste into configs/data.yaml:")
        print(result["label_map_yaml"], end="")
    else:
        print(dumps(result))
        print("# paste into configs/data.yaml:", file=sys.stderr)
        print(result["label_map_yaml"], end="", file=sys.stderr)
    return 0
