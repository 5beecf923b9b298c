"""The seed's messy txt: ``filename ; coords ; defect_type`` lines in a same-stem .txt beside each image.

The parsing itself is converters/parse.py (``parse_txt``, shared with the preview and predict --boxes); this
module only makes it a source, with the seed's problem kinds and words kept as they were.
"""

from __future__ import annotations

from typing import ClassVar

from ..parse import LineParser, parse_txt
from .base import Dropped, PerImageFiles, Read, SourceSettings

#: parse_txt's reason for a rejected line -> the problem kind (and ledger reason) of its boxes
REJECTED_KIND = {
    "empty defect_type": "empty_label",
    "filename column names another image": "filename_mismatch",
}


def read_txt(path: str, label: str, image_name: str | None, parser: LineParser) -> Read:
    """One txt file as a Read: boxes of an empty defect_type still mark their defect; boxes of a line that
    names another image do not."""
    parsed = parse_txt(path, label, image_name, parser)
    dropped = (
        [Dropped(b, REJECTED_KIND[why], why == "empty defect_type") for b, why in parsed.rejected]
        if parsed.rejected
        else []
    )
    return Read(
        boxes=parsed.boxes,
        dropped=dropped,
        problems=parsed.problems,
        entries=parsed.lines_with_content,
        skipped=parsed.lines_dropped,
        encoding=parsed.encoding,
        ok=parsed.encoding is not None,
    )


class TxtSource(PerImageFiles):
    """``annotation_format: txt`` (the default). Every image under abnormal_dir is abnormal: an empty txt is
    a problem (no usable box), not a normal image."""

    format = "txt"
    extension = ".txt"
    encodings_key = "txt_encodings"
    orphan_kind = "txt_without_image"
    missing_kind = "image_without_txt"
    ambiguous_kind = "ambiguous_txt"
    noun = "txt"
    empty_is_normal: ClassVar[bool] = False

    def __init__(self, settings: SourceSettings):
        super().__init__(settings)
        self.parser = LineParser(settings.column_delim, settings.inner_coord_delims, settings.coords_are_xyxy)

    def read_file(self, path: str, label: str, image_name: str | None) -> Read:
        return read_txt(path, label, image_name, self.parser)

    def missing_reason(self, rel: str) -> str:
        if self.annotations_root is None:
            return "abnormal image has no .txt beside it; skipped"
        return super().missing_reason(rel)

    def inputs(self) -> dict[str, int | str]:
        return {"txt_files_found": self.files_found}
