"""`qwenvl-roi schema NAME`: the JSON Schema (draft 2020-12) of a file the project writes, on stdout.

Only the schema goes to stdout, so it can be piped or redirected into a file; errors go to stderr.
"""

from __future__ import annotations

import argparse
import sys

from . import SCHEMAS, schema_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `qwenvl-roi schema`."""
    parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(SCHEMAS)}")


def run(args: argparse.Namespace) -> int:
    """Print the schema; an unknown NAME is exit code 2 with the known names."""
    if args.name not in SCHEMAS:
        print(
            f"qwenvl-roi schema: error: unknown schema {args.name!r}; one of: {', '.join(SCHEMAS)}",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(schema_text(args.name))
    return 0
