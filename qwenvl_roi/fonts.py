"""A font for drawing the users' labels (often Chinese) into pictures, and the ``#k`` fallback.

Why: defect labels are usually CJK; a Latin-only font draws them as rows of empty boxes. A CJK font found
on the system (fontconfig first, then the usual install paths of Noto CJK / Source Han / WenQuanYi and the
macOS / Windows system fonts) is used when there is one; nothing is downloaded. Otherwise matplotlib's
bundled DejaVu Sans draws ids and digits, and a label it cannot draw is shown as ``#k``, with a legend
(``#k`` -> label) written next to the picture in HTML or Markdown, where the browser draws the text.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: family names in order of preference (fontconfig matches these)
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
)

#: usual install paths when fontconfig is absent (Debian/Ubuntu/Fedora packages, macOS, Windows)
KNOWN_CJK_PATHS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/source-han-sans/SourceHanSans-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wqy-zenhei/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)

#: a character every CJK label font must have (checked in the font's character map)
_PROBE = "缺"

#: matplotlib Text properties for user text (labels, file names): drawn as written. By default ``$...$``
#: is math (``a$\frac$b`` is a parse error that kills the figure, ``$x$`` shows an italic x) and
#: ``text.usetex: True`` in a user's matplotlibrc sends it through LaTeX, where ``_ % # &`` are markup.
#: Turning both off on the Text object covers every character, unlike escaping ``$`` alone.
LITERAL_TEXT: dict[str, bool] = {"parse_math": False, "usetex": False}


@dataclass(frozen=True)
class LabelFont:
    """A font file and the code points it can draw."""

    path: str
    chars: frozenset[int]

    def can_draw(self, text: str) -> bool:
        """True when every character of ``text`` has a glyph (spaces always do)."""
        return all(ch.isspace() or ord(ch) in self.chars for ch in text)


def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(path).get_charmap())


def _fontconfig_candidates() -> list[str]:
    """CJK font files fontconfig knows, in CJK_FAMILIES order (then by path, for determinism)."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return []
    try:
        out = subprocess.run(
            [fc_list, ":lang=zh", "family", "file"], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    ranked: list[tuple[int, str]] = []
    for line in out.splitlines():
        path, _, families = line.partition(":")
        names = [f.strip() for f in families.split(",")]
        rank = min((CJK_FAMILIES.index(n) for n in names if n in CJK_FAMILIES), default=len(CJK_FAMILIES))
        ranked.append((rank, path.strip()))
    return [p for _, p in sorted(set(ranked))]


def fallback_font_path() -> str:
    """DejaVu Sans as shipped with matplotlib (always installed with the project)."""
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


@lru_cache(maxsize=1)
def find_label_font() -> LabelFont:
    """The first usable CJK font on this system, else matplotlib's DejaVu Sans (labels then become #k)."""
    for path in [*_fontconfig_candidates(), *KNOWN_CJK_PATHS]:
        if not Path(path).is_file():
            continue
        try:
            chars = _charmap(path)
        except (OSError, RuntimeError, ValueError):
            continue
        if ord(_PROBE) in chars:
            return LabelFont(path, chars)
    path = fallback_font_path()
    return LabelFont(path, _charmap(path))


def display_names(labels: Sequence[str], font: LabelFont) -> tuple[dict[str, str], dict[str, str]]:
    """({label: text drawn for it}, {"#k": label}): labels the font cannot draw become ``#k``.

    ``k`` is the 1-based position in ``labels``, so the numbering is stable for a fixed label list.
    """
    names: dict[str, str] = {}
    legend: dict[str, str] = {}
    for k, label in enumerate(labels, start=1):
        if font.can_draw(label):
            names[label] = label
        else:
            names[label] = f"#{k}"
            legend[f"#{k}"] = label
    return names, legend
