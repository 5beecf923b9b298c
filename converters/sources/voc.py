"""Pascal VOC XML (labelImg, CVAT, Roboflow): ``Annotations/<stem>.xml`` beside ``JPEGImages/``, one
``<object>`` per box with ``<name>`` and ``<bndbox>`` ``xmin ymin xmax ymax``.

Coordinates: the VOC devkit counts pixels from 1 (``xmin = 1`` is the first column, ``xmax`` the last column
inside the box), so in our 0-based corner coordinates a box is ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax,
y2 = ymax`` (a box of one pixel at the top-left corner, ``1 1 1 1``, is ``[0, 0, 1, 1]``). A file written
0-based (``xmin = 0``) thus reaches -1 and is clipped (``box_fixed``). ``<size>`` is checked against the
image as displayed; ``<filename>`` must name the paired image. ``<difficult>`` objects are kept: they are
defects. Parsed with the standard library's expat (line numbers for every problem); a file that declares
entities (the "billion laughs" expansion) is refused. The usual file, with nothing to report, is read by
ElementTree's C parser (``quick_read``), tested equal to that.
"""

from __future__ import annotations

import codecs
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.parsers import expat

from ..parse import Problem, RawBox, decode_text, image_name_keys, name_key
from .base import Dropped, PerImageFiles, Read, failed, finite

_DECLARED = re.compile(rb"""^(?:\xef\xbb\xbf)?<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


class XmlRefused(ValueError):
    """An XML file this reader will not expand (it declares entities)."""


@dataclass(slots=True)
class Node:
    """An XML element with the line it starts on (xml.etree does not keep lines)."""

    tag: str
    line: int
    text: str = ""
    children: list[Node] = field(default_factory=list)

    def find(self, tag: str) -> Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findtext(self, tag: str) -> str | None:
        node = self.find(tag)
        return None if node is None else node.text


def _decode(data: bytes) -> tuple[str, str] | None:
    """The file's text: in the encoding its XML declaration names when Python knows it (GBK from Chinese
    Windows tools too), else UTF-8 / UTF-16 / GBK as detected."""
    m = _DECLARED.match(data[:200])
    if m:
        name = m.group(1).decode("ascii")
        try:
            codecs.lookup(name)
            body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
            return body.decode(name), name.lower()
        except (LookupError, UnicodeDecodeError):
            pass
    text, encoding = decode_text(data)
    return None if text is None or encoding is None else (text, encoding)


def parse_xml(text: str) -> Node:
    """Parse XML text into Nodes; raises expat.ExpatError (with .lineno) or XmlRefused."""
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.buffer_text = True  # one call per run of text, not one per line: a third of the parse time
    stack: list[Node] = []
    parts: list[list[str]] = []
    root: list[Node] = []

    def refuse(*_: object) -> None:
        raise XmlRefused("the file declares XML entities (entity expansion is refused)")

    def start(tag: str, _attrs: dict[str, str]) -> None:
        node = Node(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)
        parts.append([])

    def end(_tag: str) -> None:
        stack.pop().text = "".join(parts.pop()).strip()

    def chars(data: str) -> None:
        if parts:
            parts[-1].append(data)

    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.Parse(text, True)  # a str is parsed as UTF-8 whatever the declaration says (decoded above)
    return root[0]


def parse_voc(doc: Node, label: str, image_name: str | None = None) -> Read:
    """A parsed VOC <annotation> as a Read (problems at the line of their element)."""
    if doc.tag != "annotation":
        return failed(
            Problem(label, doc.line, "unreadable_annotation", f"root element <{doc.tag}>, not <annotation>")
        )
    out = Read()
    size = doc.find("size")
    if size is not None:
        wh = finite([size.findtext("width") or "0", size.findtext("height") or "0"])
        if wh is None:
            out.problems.append(
                Problem(label, size.line, "size_unreadable", "<size> is not numbers; not checked")
            )
        elif min(wh) > 0:  # 0 or missing: many exporters leave it unset
            out.size, out.size_at = (wh[0], wh[1]), size.line
    mismatch = ""
    filename = doc.find("filename")
    named = filename.text.replace("\\", "/") if filename is not None else ""
    if named and image_name is not None and name_key(named) not in image_name_keys(image_name):
        mismatch = f"<filename> names {named!r}, not this file's image {image_name!r}"
    for obj in (c for c in doc.children if c.tag == "object"):
        out.entries += 1
        box = obj.find("bndbox")
        if box is None:
            out.problems.append(Problem(label, obj.line, "no_coords", "<object> without <bndbox>; skipped"))
            out.skipped += 1
            continue
        texts = [box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        values = finite(t for t in texts if t is not None) if None not in texts else None
        if values is None:
            shown = ", ".join(
                f"{k}={t!r}" for k, t in zip(("xmin", "ymin", "xmax", "ymax"), texts, strict=True)
            )
            out.problems.append(
                Problem(label, box.line, "non_numeric", f"<bndbox> {shown}: not 4 numbers; skipped")
            )
            out.skipped += 1
            continue
        xmin, ymin, xmax, ymax = values
        raw = RawBox(obj.line, (xmin - 1, ymin - 1, xmax, ymax), (obj.findtext("name") or "").strip())
        if mismatch:
            out.dropped.append(Dropped(raw, "filename_mismatch"))
            out.skipped += 1
        elif not raw.label:
            out.problems.append(Problem(label, obj.line, "empty_label", "empty <name>; box dropped"))
            out.dropped.append(Dropped(raw, "empty_label", marks=True))
            out.skipped += 1
        else:
            out.boxes.append(raw)
    if mismatch:
        assert filename is not None
        out.problems.append(
            Problem(label, filename.line, "filename_mismatch", f"{mismatch}; objects dropped")
        )
        out.ok = False
    return out


_STARTS = {tag: re.compile(rf"<{tag}[\s/>]") for tag in ("object", "size")}  # a start tag, not </...>


def quick_read(text: str, image_name: str | None = None) -> Read | None:
    """The usual file, read with ElementTree's C parser (parse_xml's Python callbacks cost three times its
    parse): the same Read parse_voc gives when nothing in the file needs reporting. Only the lines of the
    <object> and <size> start tags are then needed (boxes and the size are reported later, against the
    image), and they are found by those tags.

    None, for read_voc to parse it again with every line, when the file holds anything parse_voc reports,
    or markup that could hide a tag from that search or count lines otherwise (comments, CDATA, a DTD or
    entities, processing instructions, namespaces, lone carriage returns, nested or repeated elements)."""
    # comments, CDATA and DTDs could hide or fake a tag from the search; ElementTree renames the tags of a
    # namespace (parse_xml reads them by name); expat counts a lone CR as a line break, str.count does not
    if "<!" in text or "xmlns" in text or text.count("\r") != text.count("\r\n"):
        return None
    if text.count("<?") > (1 if text.lstrip("\ufeff").startswith("<?xml") else 0):
        return None
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError):  # ValueError: an encoding ElementTree cannot take from a str
        return None
    objects = root.findall("object")
    sizes = root.findall("size")
    starts = {tag: [m.start() for m in rx.finditer(text)] for tag, rx in _STARTS.items()}
    if root.tag != "annotation" or len(sizes) > 1 or len(starts["size"]) != len(sizes):
        return None
    if len(starts["object"]) != len(objects) or sum(1 for _ in root.iter("object")) != len(objects):
        return None

    def leaf(parent: ET.Element, tag: str) -> str | None:
        node = parent.find(tag)
        if node is None:
            return None
        if len(node):  # text around child elements: parse_xml's text joins it; leave it to that path
            raise LookupError
        return (node.text or "").strip()

    out = Read()
    try:
        if sizes:
            wh = finite([leaf(sizes[0], "width") or "0", leaf(sizes[0], "height") or "0"])
            if wh is None:
                return None
            if min(wh) > 0:
                out.size, out.size_at = (wh[0], wh[1]), text.count("\n", 0, starts["size"][0]) + 1
        named = (leaf(root, "filename") or "").replace("\\", "/")
        if named and image_name is not None and name_key(named) not in image_name_keys(image_name):
            return None
        for obj, start in zip(objects, starts["object"], strict=True):
            box = obj.find("bndbox")
            if box is None:
                return None
            values = finite([leaf(box, k) for k in ("xmin", "ymin", "xmax", "ymax")])
            name = leaf(obj, "name")
            if values is None or not name:
                return None
            xmin, ymin, xmax, ymax = values
            out.boxes.append(RawBox(text.count("\n", 0, start) + 1, (xmin - 1, ymin - 1, xmax, ymax), name))
    except LookupError:
        return None
    out.entries = len(objects)
    return out


def read_voc(path: str, label: str, image_name: str | None = None) -> Read:
    """One VOC XML file as a Read."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return failed(
            Problem(label, None, "unreadable_annotation", f"cannot read file: {exc.strerror or exc}")
        )
    decoded = _decode(data)
    if decoded is None:
        return failed(
            Problem(label, None, "encoding", "file is neither its declared encoding, UTF-8, UTF-16 nor GBK")
        )
    text, encoding = decoded
    quick = quick_read(text, image_name)
    if quick is not None:
        quick.encoding = encoding
        return quick
    try:
        doc = parse_xml(text)
    except expat.ExpatError as exc:
        return failed(
            Problem(
                label, exc.lineno, "unreadable_annotation", f"invalid XML: {expat.ErrorString(exc.code)}"
            ),
            encoding,
        )
    except XmlRefused as exc:
        return failed(Problem(label, None, "unreadable_annotation", f"{exc}; skipped"), encoding)
    out = parse_voc(doc, label, image_name)
    out.encoding = encoding
    return out


class VocSource(PerImageFiles):
    """``annotation_format: voc``: ``<stem>.xml`` under annotations_dir (VOC's Annotations/) or beside."""

    format = "voc"
    extension = ".xml"
    noun = "VOC xml"

    def read_file(self, path: str, label: str, image_name: str | None) -> Read:
        return read_voc(path, label, image_name)
