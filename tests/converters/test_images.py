"""Images as the trainer sees them: EXIF-rotated JPEGs, 12-bit-in-16 PNGs and other pixel modes are loaded
with LLaMA-Factory's own mm_plugin, and the defect must be visible and inside its positive box."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from qwenvl_roi.converters.config import load_data_config
from qwenvl_roi.converters.convert import convert
from qwenvl_roi.converters.prepare import prepare

GREY = (128, 128, 128)
RED = (220, 30, 30)


def cover(box: list[float], mask: np.ndarray) -> float:
    """Share of a defect's pixels (mask) that lie inside an xyxy box."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return float(mask[y1:y2, x1:x2].sum() / mask.sum())


def red_mask(pixels: np.ndarray) -> np.ndarray:
    r, g, b = (pixels[..., i].astype(int) for i in range(3))
    return (r > 150) & (g < 100) & (b < 100)


def exif_jpeg(path: Path, shown: Image.Image, orientation: int) -> None:
    """Save ``shown`` (what a viewer displays) as a JPEG whose stored pixels need ``orientation`` to look
    like it, the way phones and some line cameras write them."""
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    stored = shown.transpose(undo[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as check:  # the fixture is what it claims: a viewer shows `shown`
        assert check.size == stored.size != shown.size or orientation == 3
        assert ImageOps.exif_transpose(check).size == shown.size


def test_exif_rotated_jpeg_defect_inside_its_positive_box(tmp_path: Path, files, make_config) -> None:
    shown = Image.new("RGB", (400, 600), GREY)  # displayed 400x600, stored 600x400 with Orientation=6
    box = (60, 420, 140, 500)  # drawn in the labelling tool, i.e. on the displayed image
    shown.paste(RED, box)
    exif_jpeg(tmp_path / "abn" / "b1" / "cam.jpg", shown, 6)
    files.txt(tmp_path / "abn" / "b1" / "cam.txt", f"cam.jpg;{';'.join(map(str, box))};crack\n")
    exif_jpeg(tmp_path / "nor" / "b1" / "ok.jpg", Image.new("RGB", (400, 600), GREY), 8)
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    cfg = make_config(train_ratio=1.0, val_ratio=0.0, test_ratio=0.0)
    report = convert(cfg, progress=False)["prepare"]
    out = tmp_path / "out"
    samples = files.regions(out)
    (s,) = [s for s in samples if s["sample_id"] == "abnormal/b1/cam.jpg#0"]
    assert (s["width"], s["height"]) == (400, 600)
    pixels = files.trainer_pixels(out / s["image"])  # what LLaMA-Factory feeds the model
    assert pixels.shape == (600, 400, 3)
    mask = red_mask(pixels)
    assert mask.sum() > 0.9 * 80 * 80, "the defect is visible to the model"
    (pos,) = [r for r in s["regions"] if r["positive"]]
    assert cover(pos["box"], mask) > 0.99
    negs = [r for r in s["regions"] if not r["positive"]]
    assert negs and all(cover(r["box"], mask) <= 0.1 for r in negs)
    (n,) = [x for x in samples if x["sample_id"] == "normal/b1/ok.jpg#0"]
    assert (n["width"], n["height"]) == (400, 600)
    assert files.trainer_pixels(out / n["image"]).shape == (600, 400, 3)
    # the sft record points LLaMA-Factory (media_dir = dataset_dir) at the same upright copy
    rec = json.loads((out / "sft_train.json").read_text(encoding="utf-8"))
    images = {r["images"][0] for r in rec}
    assert all(not Path(p).is_absolute() for p in images)
    assert any((tmp_path / "dinfo" / p).resolve() == (out / s["image"]).resolve() for p in images)
    assert report["images"]["converted_by_reason"] == {"exif_orientation": 2}
    converted = {c["image"] for c in report["images"]["converted_images"]}
    assert converted == {"abnormal/b1/cam.jpg", "normal/b1/ok.jpg"}
    assert report["images"]["used_as_is"] == 8
    assert not report["problems"]

    flagged = prepare(load_data_config(make_config(image_fixes="flag")), progress=False).report
    kinds = {(Path(p["file"]).name, p["kind"]) for p in flagged["problems"]}
    assert {("cam.jpg", "image_needs_fix"), ("ok.jpg", "image_needs_fix")} <= kinds
    assert flagged["boxes"]["dropped_by_reason"] == {"image_needs_fix": 1}
    assert flagged["images"]["left_out"] == 2
    assert all("cam.jpg" not in x["sample_id"] for x in files.regions(out))


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_a_tiff_turned_by_its_orientation_tag_keeps_its_box_on_the_defect(
    tmp_path: Path, files, make_config, orientation: int
) -> None:
    """Pillow's TIFF reader gives the displayed size and turns the pixels on load itself (unlike JPEG's):
    the box drawn on the displayed picture must be kept and land on the defect the trainer sees."""
    shown = Image.new("RGB", (300, 400), GREY)  # displayed 300x400
    box = (40, 300, 120, 380)
    shown.paste(RED, box)
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
    path = tmp_path / "abn" / "b1" / "scan.tif"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    shown.transpose(undo[orientation]).save(path, exif=exif)
    with Image.open(path) as check:  # the fixture is what it claims: a viewer shows `shown`
        check.load()
        assert check.size == shown.size and np.array_equal(np.asarray(check), np.asarray(shown))
    files.txt(tmp_path / "abn" / "b1" / "scan.txt", f"scan.tif;{';'.join(map(str, box))};crack\n")
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    report = convert(make_config(train_ratio=1.0, val_ratio=0.0, test_ratio=0.0), progress=False)["prepare"]
    assert not report["problems"]
    (s,) = [s for s in files.regions(tmp_path / "out") if s["sample_id"] == "abnormal/b1/scan.tif#0"]
    assert (s["width"], s["height"]) == (300, 400)
    pixels = files.trainer_pixels(tmp_path / "out" / s["image"])  # what LLaMA-Factory feeds the model
    assert pixels.shape == (400, 300, 3)
    mask = red_mask(pixels)
    (pos,) = [r for r in s["regions"] if r["positive"]]
    assert pos["box"] == list(box) and cover(pos["box"], mask) > 0.99


def test_12_bit_png_is_scaled_not_saturated(tmp_path: Path, files, make_config) -> None:
    grey = np.full((240, 320), 1000, np.uint16)  # a Mono12 camera: background 1000, defect 3000 of 4095
    grey[100:140, 150:210] = 3000
    path = tmp_path / "abn" / "b1" / "mono.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(grey).save(path)
    files.txt(path.with_suffix(".txt"), "mono.png;150;100;210;140;spot\n")
    # what LLaMA-Factory does with the original: everything clips to white, the defect is gone
    assert (files.trainer_pixels(path) == 255).all()
    files.simple(tmp_path, n_abnormal=3, n_normal=3, folders=1)
    report = convert(make_config(train_ratio=1.0, val_ratio=0.0, test_ratio=0.0), progress=False)["prepare"]
    out = tmp_path / "out"
    (s,) = [s for s in files.regions(out) if s["sample_id"] == "abnormal/b1/mono.png#0"]
    pixels = files.trainer_pixels(out / s["image"]).astype(int)
    assert (pixels[..., 0] == pixels[..., 2]).all()
    # scaled by the 12 bits actually used: 1000 -> 62, 3000 -> 187 (of 255)
    assert abs(pixels[0, 0, 0] - round(1000 * 255 / 4095)) <= 1
    assert abs(pixels[120, 180, 0] - round(3000 * 255 / 4095)) <= 1
    mask = pixels[..., 0] > 120
    (pos,) = [r for r in s["regions"] if r["positive"]]
    assert mask.sum() == 60 * 40 and cover(pos["box"], mask) == 1.0
    assert all(cover(r["box"], mask) <= 0.1 for r in s["regions"] if not r["positive"])
    assert report["images"]["converted_by_reason"] == {"16_bit": 1}
    assert report["images"]["bit_depth"] == {"used": 12, "how": "detected", "max_value": 3000.0, "images": 1}
    # dataset_meta.json keeps the depth after build-sft (predict reads new 16-bit pictures with it)
    assert json.loads((out / "dataset_meta.json").read_text(encoding="utf-8"))["image_bit_depth"] == 12

    # a configured depth that is too small clips, and says so
    r = prepare(load_data_config(make_config(image_bit_depth=10)), progress=False).report
    (p,) = [p for p in r["problems"] if p["kind"] == "pixels_clipped"]
    assert p["file"].endswith("b1/mono.png") and "2400 pixel value(s) outside 0..1023" in p["reason"]
    (s,) = [s for s in files.regions(out) if s["sample_id"] == "abnormal/b1/mono.png#0"]
    assert files.trainer_pixels(out / s["image"])[120, 180, 0] == 255
    # rerunning reuses the copy (not rewritten) and reports the same, byte for byte
    copy = out / s["image"]
    before = (copy.stat().st_mtime_ns, (out / "prepare_report.json").read_bytes())
    again = prepare(load_data_config(make_config(image_bit_depth=10)), progress=False).report
    assert again == r and (copy.stat().st_mtime_ns, (out / "prepare_report.json").read_bytes()) == before


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("P", "palette"), ("PT", "palette"), ("CMYK", "cmyk"), ("LA", "alpha"), ("RGBA", "alpha"),
     ("F", "float"), ("I", "32_bit")],
)  # fmt: skip
def test_other_modes_become_8_bit_rgb(tmp_path: Path, files, make_config, mode: str, reason: str) -> None:
    """Each mode gets a copy whose pixels match an independent numpy expectation."""
    h, w = 60, 80
    inside = np.zeros((h, w), bool)
    inside[20:40, 30:60] = True
    path = tmp_path / "nor" / "s" / ("x.tif" if mode in ("F", "I", "CMYK") else "x.png")
    path.parent.mkdir(parents=True)
    if mode in ("P", "PT"):
        img = Image.frombytes("P", (w, h), np.where(inside, 1, 0).astype(np.uint8).tobytes())
        img.putpalette([10, 200, 30, 200, 20, 40] + [0] * 762)
        img.save(path, transparency=0) if mode == "PT" else img.save(path)
        bg = (255, 255, 255) if mode == "PT" else (10, 200, 30)
        expect = np.where(inside[..., None], (200, 20, 40), bg)
    elif mode == "CMYK":
        Image.new("CMYK", (w, h), (0, 255, 255, 0)).save(path)  # pure red
        expect = np.broadcast_to(np.array((255, 0, 0)), (h, w, 3))
    elif mode in ("LA", "RGBA"):
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[inside] = (90, 90, 90, 255)  # opaque defect on a transparent (black) background
        img = Image.fromarray(rgba)
        (img.convert("LA") if mode == "LA" else img).save(path)
        expect = np.where(inside[..., None], (90, 90, 90), (255, 255, 255))
    elif mode == "F":
        Image.fromarray(np.where(inside, 0.8, 0.2).astype(np.float32)).save(path)
        expect = np.repeat(np.where(inside, 204, 51)[..., None], 3, axis=2)
    else:  # 32-bit integer grey holding 14-bit counts
        Image.fromarray(np.where(inside, 12000, 3000).astype(np.int32)).save(path)
        grey = np.where(inside, round(12000 * 255 / 16383), round(3000 * 255 / 16383))  # 14 bits used
        expect = np.repeat(grey[..., None], 3, axis=2)
    with Image.open(path) as im:
        assert im.mode == {"PT": "P"}.get(mode, mode)
    files.simple(tmp_path, n_abnormal=2, n_normal=0, folders=1)
    report = prepare(load_data_config(make_config()), progress=False).report
    (s,) = [s for s in files.regions(tmp_path / "out") if s["sample_id"] == f"normal/s/{path.name}#0"]
    got = files.trainer_pixels(tmp_path / "out" / s["image"]).astype(int)
    assert np.abs(got - expect).max() <= 1, (got[0, 0], got[30, 40])
    assert report["images"]["converted_by_reason"] == {reason: 1}
    assert not report["problems"]


def test_a_damaged_exif_block_is_that_images_problem_not_a_stray_warning(
    tmp_path: Path, files, make_config
) -> None:
    """PIL only warns ("Truncated File Read", "Possibly corrupt EXIF data") without naming the file: the
    report names it instead, and nothing is printed as a bare warning."""
    import struct
    import warnings

    ifd = struct.pack(">H", 1) + struct.pack(">HHII", 0x010F, 2, 100, 0x100) + struct.pack(">I", 0)
    exif = b"Exif\x00\x00" + b"MM\x00\x2a" + struct.pack(">I", 8) + ifd  # Make: 100 bytes past the end
    (tmp_path / "abn" / "b1").mkdir(parents=True)
    Image.new("RGB", (120, 90), GREY).save(tmp_path / "abn" / "b1" / "cam.jpg", exif=exif)
    files.txt(tmp_path / "abn" / "b1" / "cam.txt", "cam.jpg;10;10;60;60;crack\n")
    files.simple(tmp_path, n_abnormal=4, n_normal=4, folders=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = prepare(load_data_config(make_config()), progress=False).report
    assert not [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    found = {p["kind"]: p["reason"] for p in report["problems"] if p["file"].endswith("b1/cam.jpg")}
    assert "Truncated File Read" in found["exif_unreadable"]
