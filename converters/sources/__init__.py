"""Annotation sources: one module per format, one entry per format in ``SOURCES``.

To add a format: write ``converters/sources/<name>.py`` with a ``Source`` subclass (``PerImageFiles`` for
one annotation file per image) whose ``format`` is the data.yaml value, and add it to ``SOURCES`` below.
config.py takes the allowed values and the format-specific keys (``keys``, ``required``) from here.
"""

from __future__ import annotations

from .base import Dropped, PerImageFiles, Read, Record, Source, SourceError, SourceSettings
from .coco import CocoSource
from .labelme import LabelmeSource
from .txt import TxtSource
from .voc import VocSource
from .yolo import YoloSource

SOURCES: dict[str, type[Source]] = {
    s.format: s for s in (TxtSource, LabelmeSource, VocSource, YoloSource, CocoSource)
}
FORMATS = tuple(SOURCES)
#: every format-specific data.yaml key (each format reads only its own ``keys``)
FORMAT_KEYS = tuple(sorted(set().union(*(s.keys for s in SOURCES.values()))))


def make_source(settings: SourceSettings) -> Source:
    """The source of ``settings.annotation_format``; SourceError for an unknown format or unusable inputs
    (a names file that cannot be read, ...)."""
    try:
        cls = SOURCES[settings.annotation_format]
    except KeyError:
        known = ", ".join(FORMATS)
        raise SourceError(f"annotation_format {settings.annotation_format!r}: one of {known}") from None
    return cls(settings)


__all__ = [
    "FORMATS",
    "FORMAT_KEYS",
    "SOURCES",
    "Dropped",
    "PerImageFiles",
    "Read",
    "Record",
    "Source",
    "SourceError",
    "SourceSettings",
    "make_source",
]
