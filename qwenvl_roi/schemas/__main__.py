"""``python -m qwenvl_roi.schemas --write docs/schemas``: regenerate the published JSON Schemas and README
from the models (``--check``: exit 1 and name the files that are out of date)."""

from __future__ import annotations

import argparse
import sys

from . import WRITE_COMMAND, stale_published, write_published


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qwenvl_roi.schemas", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="FOLDER", help="write <name>.schema.json and README.md there")
    action.add_argument("--check", metavar="FOLDER", help="exit 1 when a published file is out of date")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_published(args.write):
            print(path)
        return 0
    stale = stale_published(args.check)
    if stale:
        print(f"out of date in {args.check}: {', '.join(stale)}; run `{WRITE_COMMAND}`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
