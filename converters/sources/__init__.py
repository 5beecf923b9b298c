"""Annotation sources: one module per format, one entry per format in ``SOURCES``; benchmark layouts
(``dataset_layout``: the folders say what each image is, masks give the defects) in ``LAYOUTS``.

To add a format: write ``converters/sources/<name>.py`` with a ``Source`` subclass (``PerImageFiles`` for
one annotation file per image) whose ``format`` is the data.yaml value, and add it to ``SOURCES`` below; a
layout is a ``LayoutSource`` subclass (layout.py) added to ``LAYOUTS``. config.py takes the allowed values
and the format-specific keys (``keys``, ``required``) from here.
"""

from __future__ import annotations

from .base import Dropped, PerImageFiles, Read, Record, Source, SourceError, SourceSettings
from .coco import CocoSource
from .labelme import LabelmeSource
from .layout import LayoutSource
from .mvtec import MvtecSource
from .txt import TxtSource
from .visa import VisaSource
from .voc import VocSource
from .yolo import YoloSource

SOURCES: dict[str, type[Source]] = {
    s.format: s for s in (TxtSource, LabelmeSource, VocSource, YoloSource, CocoSource)
}
FORMATS = tuple(SOURCES)
#: every format-specific data.yaml key (each format reads only its own ``keys``)
FORMAT_KEYS = tuple(sorted(set().union(*(s.keys for s in SOURCES.values()))))
#: ``dataset_layout`` value -> its source (it reads the whole layout under ``dataset_root``)
LAYOUTS: dict[str, type[LayoutSource]] = {s.format: s for s in (MvtecSource, VisaSource)}
#: every layout-specific data.yaml key
LAYOUT_KEYS = tuple(sorted(set().union(*(s.keys for s in LAYOUTS.values()))))


def make_source(settings: SourceSettings) -> Source:
    """The source of ``settings.dataset_layout`` when set, else of ``settings.annotation_format``;
    SourceError for an unknown one or unusable inputs (a names file that cannot be read, ...)."""
    layout = getattr(settings, "dataset_layout", None)
    if layout is not None:
        if layout not in LAYOUTS:
            raise SourceError(f"dataset_layout {layout!r}: one of {', '.join(LAYOUTS)}")
        return LAYOUTS[layout](settings)
    try:
        cls = SOURCES[settings.annotation_format]
    except KeyError:
        known = ", ".join(FORMATS)
        raise SourceError(f"annotation_format {settings.annotation_format!r}: one of {known}") from None
    return cls(settings)


__all__ = [
    "FORMATS",
    "FORMAT_KEYS",
    "LAYOUTS",
    "LAYOUT_KEYS",
    "SOURCES",
    "Dropped",
    "LayoutSource",
    "PerImageFiles",
    "Read",
    "Record",
    "Source",
    "SourceError",
    "SourceSettings",
    "make_source",
]
