"""The family table is the one source of family facts: no other module of the package spells a family or
architecture name, and what used to be repeated per module (default family, processor pixel limits,
coordinate frames) is read from the table, so a Qwen3 entry cannot silently get Qwen2's values."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from qwenvl_roi.families import FAMILIES, FAMILY_NAMES, FRAMES, MODEL_TYPES, TINY_ARCHES, family

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("converters", "plugin", "qwenvl_roi")
TABLE = ROOT / "qwenvl_roi" / "families.py"
NAMES = sorted({*FAMILY_NAMES, *MODEL_TYPES, *TINY_ARCHES}, key=len, reverse=True)
# a name as a whole word: not part of a longer identifier ("qwen3_vl" in "qwen3_vl_nothink" is not a hit)
NAME_RE = re.compile(r"(?<![A-Za-z0-9_])(?:" + "|".join(map(re.escape, NAMES)) + r")(?![A-Za-z0-9_])")
# argparse calls whose help= text may name families (the user reads it; the value itself comes from the table)
HELP_CALLS = {"add_argument", "add_parser"}
STRING_TOKENS = {tokenize.STRING} | {getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}


def _help_spans(tree: ast.AST) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) positions of the ``help=`` values of argparse calls: the only exempt strings."""
    spans = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr not in HELP_CALLS:
            continue
        for kw in node.keywords:
            if kw.arg == "help":
                v = kw.value
                spans.append(((v.lineno, v.col_offset), (v.end_lineno or v.lineno, v.end_col_offset or 0)))
    return spans


def spelled_names(source: str) -> list[tuple[int, str]]:
    """(line, token text) of every string token that is or contains a family / architecture name."""
    spans = _help_spans(ast.parse(source))
    hits = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in STRING_TOKENS or not NAME_RE.search(tok.string):
            continue
        if any(start <= tok.start and tok.end <= end for start, end in spans):
            continue
        hits.append((tok.start[0], tok.string))
    return hits


def test_the_scanner_finds_names_in_any_string_and_exempts_only_argparse_help() -> None:
    source = (
        '"""Docstring naming qwen3_vl."""\n'
        'A = "qwen2_5_vl"\n'
        "B = f\"recipes/{'x'}/qwen3_5_moe/a.yaml\"\n"
        'C = "qwen3_vl_nothink"  # a template, not a family name\n'
        'p.add_argument("--arch", default="qwen2_vl", help="default qwen2_vl")\n'
        'p.add_argument("--x", help=("also qwen3_5 "\n    "and qwen3_vl"))\n'
        'other(help="qwen3_vl")\n'
    )
    lines = [line for line, _ in spelled_names(source)]
    assert lines == [1, 2, 3, 5, 8]


def test_no_module_but_the_table_spells_a_family_or_architecture_name() -> None:
    hits = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == TABLE:
                continue
            for line, text in spelled_names(path.read_text(encoding="utf-8")):
                hits.append(f"{path.relative_to(ROOT)}:{line}: {text[:80]!r}")
    assert not hits, "family / architecture names outside qwenvl_roi/families.py:\n" + "\n".join(hits)


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_qwen3_dataset_without_dataset_meta_gets_its_familys_pixel_limits(name: str, tmp_path: Path) -> None:
    """The gallery's fallback when dataset_meta.json is missing, and a FrameSettings given only a family,
    use that family's released processor limits and grid, not Qwen2's."""
    from qwenvl_roi.converters.frames import model_frame_size

    from qwenvl_roi.pictures import FrameSettings, frame_settings

    fam = family(name)
    limits = (fam.processor_min_pixels, fam.processor_max_pixels)
    assert limits == (65536, 16777216)
    bare = FrameSettings(model_family=name)
    assert (bare.processor_min_pixels, bare.processor_max_pixels) == limits
    regions = tmp_path / "regions_test.jsonl"
    regions.write_text("", encoding="utf-8")
    settings, warning = frame_settings(regions, name)
    assert warning is not None and "dataset_meta.json not found" in warning
    assert settings == bare
    # a tiny picture is grown to the Qwen3 minimum (256 x 256), on the 32-grid
    assert bare.frame_size(40, 40) == (256, 256)
    assert model_frame_size(40, 40, family=name) == (256, 256)
    assert model_frame_size(40, 40) == (56, 56)  # the default family's (Qwen2.5-VL: 3136 px, 28-grid)


def test_frames_are_table_entries() -> None:
    """Each family's frame carries its encoder, scale and wording; the plugin's words come from it."""
    from qwenvl_roi.plugin.dataset_match import _frame

    for fam in FAMILIES.values():
        frame = fam.frame
        assert frame is FRAMES[frame.name]
        assert frame.prompt_words.keys() == {"zh", "en"}
        assert _frame(fam.name) == frame.words
        # a normalised frame has a scale and a clamp; only the resized-pixels frame needs the frame size
        pixels = frame.encoder == "pixels"
        assert (frame.scale is None) == (frame.high is None) == frame.needs_size == pixels
    assert _frame("llava") == "an unknown frame"
