"""VOC files read by ElementTree's C parser (sources/voc.quick_read) give exactly the Read of the
line-keeping expat path (parse_xml + parse_voc), whose lines test_sources.py checks against the files; and
everything that path reports, or markup that could hide a tag from the quick path's line search, goes to
it. Run on labelImg's layout and on the variants real exporters and hand edits produce."""

from __future__ import annotations

from pathlib import Path

import pytest
from qwenvl_roi.converters.sources import voc
from qwenvl_roi.converters.sources.base import Read
from qwenvl_roi.converters.sources.voc import parse_voc, parse_xml, quick_read, read_voc

OBJ = (
    "\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<difficult>0</difficult>\n"
    "\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>12</ymin>\n\t\t\t<xmax>40</xmax>\n"
    "\t\t\t<ymax>30.5</ymax>\n\t\t</bndbox>\n\t</object>\n"
)


def doc(objects: str = "", head: str = "", size: str = "<size><width>64</width><height>48</height></size>"):
    return (
        f"{head}<annotation>\n\t<folder>b</folder>\n\t<filename>a.jpg</filename>\n\t{size}\n"
        f"\t<segmented>0</segmented>\n{objects}</annotation>\n"
    )


two = OBJ.format(name="裂缝", x1=5) + OBJ.format(name=" Crack &amp; 1 ", x1="6.5")
CLEAN = {
    "labelImg": doc(two),
    "crlf": doc(two).replace("\n", "\r\n"),
    "declaration": doc(two, head='<?xml version="1.0" encoding="utf-8"?>\n'),
    "no objects": doc(),
    "size zero": doc(two, size="<size><width>0</width><height>0</height></size>"),
    "size self-closing": doc(two, size="<size/>"),
    "no size": doc(two, size=""),
    "tags over lines": doc('<object\n>\n<name>x</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax>'
                           "<ymax>4</ymax></bndbox></object>\n" + two),
    "attributes": doc(two.replace("<object>", '<object id="1" >')),
    "one line": doc(two).replace("\n", "").replace("\t", ""),
}  # fmt: skip
UNSURE = {  # nothing to report, but the quick path cannot be sure of its tags or lines
    "comment": doc(two, head="<!-- <object> -->\n"),
    "cdata name": doc(OBJ.format(name="<![CDATA[crack]]>", x1=5)),
    "doctype": doc(two, head="<!DOCTYPE annotation>\n"),
    "processing instruction": doc(two.replace("<pose>", "<?pi <object>?><pose>")),
    "lone carriage returns": doc(two).replace("\n", "\r"),
    "nested object": doc(two.replace("<pose>", "<part><object><name>p</name></object></part><pose>")),
    "two sizes": doc(two, size="<size><width>64</width></size><size><width>64</width></size>"),
    "name with a child": doc(OBJ.format(name="cr<b/>ack", x1=5)),
    "namespace": doc(two).replace("<annotation>", '<annotation xmlns="urn:x">'),
    "namespace on a leaf": doc(two).replace("<width>", '<width xmlns="urn:x">'),
}
REPORTED = {
    "no bndbox": doc(OBJ.format(name="crack", x1=5).replace("bndbox", "box")),
    "not numbers": doc(OBJ.format(name="crack", x1="five")),
    "missing xmin": doc(OBJ.format(name="crack", x1=5).replace("<xmin>5</xmin>", "")),
    "empty name": doc(OBJ.format(name="  ", x1=5)),
    "no name": doc(OBJ.format(name="c", x1=5).replace("<name>c</name>", "")),
    "another image": doc(two).replace("a.jpg", "b.jpg"),
    "another image, namespaced": doc(two).replace("<filename>a.jpg", '<filename xmlns="urn:x">b.jpg'),
    "size unreadable": doc(two, size="<size><width>w</width><height>48</height></size>"),
    "another root": doc(two).replace("annotation>", "labels>"),
    "entity": doc(two, head='<!DOCTYPE a [<!ENTITY e "x">]>\n'),
    "broken xml": doc(two)[:-20],
}


def slow(text: str, image_name: str) -> Read:
    return parse_voc(parse_xml(text), "f.xml", image_name)


@pytest.mark.parametrize("name", sorted(CLEAN))
def test_clean_files_take_the_quick_path_and_read_the_same(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = CLEAN[name]
    quick = quick_read(text, "a.jpg")
    assert quick is not None, name
    assert quick == slow(text, "a.jpg")
    path = tmp_path / "f.xml"
    path.write_bytes(text.encode())

    def no_expat(_text: str) -> None:
        raise AssertionError("read_voc parsed a clean file with expat")

    monkeypatch.setattr(voc, "parse_xml", no_expat)
    read = read_voc(str(path), "f.xml", "a.jpg")
    assert read.encoding == "utf-8"
    quick.encoding = read.encoding
    assert read == quick


@pytest.mark.parametrize("name", sorted(UNSURE) + sorted(REPORTED))
def test_anything_to_report_or_unsure_goes_to_the_line_keeping_path(name: str, tmp_path: Path) -> None:
    text = {**UNSURE, **REPORTED}[name]
    assert quick_read(text, "a.jpg") is None, name
    path = tmp_path / "f.xml"
    path.write_bytes(text.encode())
    read = read_voc(str(path), "f.xml", "a.jpg")
    assert bool(read.problems) == (name in REPORTED), read
    if name not in ("broken xml", "entity"):  # parse_xml itself raises on these; read_voc reports them
        expected = slow(text, "a.jpg")
        expected.encoding = read.encoding
        assert read == expected
