"""converters/near_duplicates.py: twins found among alike product photos, siblings left apart, work bounded.

Why: a twin of a training picture in the blind test inflates every test figure, and the pictures of one
product are alike by design, so a hash alone would pair distinct parts. The twins here are planted the way
they arise (re-encoded, brighter, resized, PNG <-> JPEG, EXIF-rotated) among siblings from
bench/similar_parts.py (one fixture, one part; units differ by placement, surface and defects).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from qwenvl_roi.converters import near_duplicates as nd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from similar_parts import TWIN_KINDS, Planted, generate  # noqa: E402


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """36 siblings over two product lines (512x384); 2 twins of each kind (one of a JPEG, one of a PNG)."""
    return generate(tmp_path_factory.mktemp("parts"), 36, 2, seed=5, width=512, height=384, lines=2)


def _pictures(planted: Planted) -> list[nd.Picture]:
    paths = planted.siblings + [t for t, _, _ in planted.twins]
    return [nd.Picture(str(p), p.name, p.parent.name) for p in paths]


def _sets(result: nd.NearDuplicates) -> set[frozenset[str]]:
    return {frozenset(s.members) for s in result.sets}


def test_phash_is_imagehash() -> None:
    """Our scipy DCT pHash equals imagehash 4.3.2's phash bit for bit (its hex string read as an int)."""
    imagehash = pytest.importorskip("imagehash")
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in ((40, 90), (300, 200))
    ]
    yy, xx = np.mgrid[0:120, 0:160]
    images.append(Image.fromarray((127 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint8)))
    images.append(Image.new("L", (50, 50), 90))  # flat: every coefficient but the DC is zero
    for im in images:
        assert nd.phash_image(im) == int(str(imagehash.phash(im)), 16)


def test_unreduced_fingerprint_is_imagehash_of_the_trainers_picture(planted: Planted) -> None:
    """Without reduced decoding the hash is imagehash.phash of the upright picture (EXIF applied)."""
    imagehash = pytest.importorskip("imagehash")
    for path in (
        planted.siblings[0],
        planted.siblings[1],
        *(t for t, _, k in planted.twins if k == "exif_rotated"),
    ):
        with Image.open(path) as im:
            upright = ImageOps.exif_transpose(im).convert("RGB")
        assert nd.fingerprint(path, reduced=False).hash == int(str(imagehash.phash(upright)), 16)


def test_every_twin_found_and_no_sibling_paired(planted: Planted, tmp_path: Path) -> None:
    result = nd.find_near_duplicates(_pictures(planted), tmp_path / "cache.json", workers=1)
    expected = {frozenset({twin.name, source.name}) for twin, source, _ in planted.twins}
    assert _sets(result) == expected
    assert {k for _, _, k in planted.twins} == set(TWIN_KINDS)
    assert {s.suffix for _, s, k in planted.twins if k == "png_jpeg"} == {".jpg", ".png"}  # both ways
    # the hash alone pairs siblings: the pixels are what keeps them apart
    assert result.rejected_pairs > 0
    assert result.verified_pairs == len(expected)
    assert all(s.correlation_min >= nd.DEFAULT_MIN_CORRELATION for s in result.sets)


def test_deterministic_and_independent_of_workers(planted: Planted) -> None:
    pictures = _pictures(planted)
    one = nd.find_near_duplicates(pictures, None, workers=1)
    again = nd.find_near_duplicates(pictures, None, workers=1)
    two = nd.find_near_duplicates(pictures, None, workers=2)
    assert two.decoded == len(pictures)  # decoded by the pool, not served from anywhere else
    assert one == again == two
    fp1 = nd.hash_pictures([p.path for p in pictures], None, workers=1).fingerprints
    fp2 = nd.hash_pictures([p.path for p in pictures], None, workers=2).fingerprints
    assert fp1.keys() == fp2.keys()
    for p in fp1:
        assert fp1[p].hash == fp2[p].hash and np.array_equal(fp1[p].thumb, fp2[p].thumb)


def _bmp(path: Path, seed: int) -> Path:
    """An uncompressed picture: its file size depends on its dimensions only."""
    arr = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format="BMP")
    return path


def test_rerun_uses_the_cache_without_decoding(tmp_path: Path) -> None:
    paths = [str(_bmp(tmp_path / f"p{k}.bmp", k)) for k in range(3)]
    cache = tmp_path / "out" / "image_cache" / "near_duplicates.json"
    first = nd.hash_pictures(paths, cache, workers=1)
    assert (first.decoded, first.cached) == (3, 0)
    st = os.stat(paths[0])
    _bmp(Path(paths[0]), 99)  # other pixels, same size ...
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the same mtime: looks unchanged
    assert os.path.getsize(paths[0]) == st.st_size
    second = nd.hash_pictures(paths, cache, workers=1)
    assert (second.decoded, second.cached) == (0, 3)
    assert second.fingerprints[paths[0]].hash == first.fingerprints[paths[0]].hash  # the cached hash
    assert np.array_equal(second.fingerprints[paths[0]].thumb, first.fingerprints[paths[0]].thumb)
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # now it changed: decoded again
    third = nd.hash_pictures(paths, cache, workers=1)
    assert (third.decoded, third.cached) == (1, 2)
    assert third.fingerprints[paths[0]].hash == nd.fingerprint(paths[0]).hash
    data = json.loads(cache.read_text(encoding="utf-8"))
    assert data["recipe"] == nd.RECIPE and sorted(data["pictures"]) == sorted(paths)
    # a picture no longer listed leaves the cache
    nd.hash_pictures(paths[1:], cache, workers=1)
    assert sorted(json.loads(cache.read_text(encoding="utf-8"))["pictures"]) == sorted(paths[1:])


def _near(rng: np.random.Generator, h: int, bits: int) -> int:
    for b in rng.choice(64, bits, replace=False):
        h ^= 1 << int(b)
    return h


def test_pair_search_is_exact_and_each_pair_once() -> None:
    """The multi-index search finds exactly the pairs brute force finds, each once, for several radii."""
    rng = np.random.default_rng(1)
    values = [int(v) for v in rng.integers(0, 2**64 - 1, 2500, dtype=np.uint64, endpoint=True)]
    for k in range(400):  # plant near pairs at distances 0..12
        values[int(rng.integers(2500))] = _near(rng, values[k], k % 13)
    hashes = np.array(values, dtype=np.uint64)
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    upper = np.triu(np.ones(dist.shape, dtype=bool), 1)
    for k in (0, 3, 6, 10, 14):
        got: list[tuple[int, int]] = []
        for i, j, _ in nd.hash_pairs(hashes, k):
            got += zip(i.tolist(), j.tolist(), strict=True)
        a, b = np.nonzero((dist <= k) & upper)
        brute = set(zip(a.tolist(), b.tolist(), strict=True))
        assert len(got) == len(set(got))
        assert set(got) == brute


def test_pair_search_is_sub_quadratic() -> None:
    """20,000 random hashes: the Hamming distances computed are a small fraction of all pairs, and ten
    times the hashes cost far less than a hundred times the comparisons (what all pairs would cost)."""
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True)
    all_pairs = hashes.size * (hashes.size - 1) // 2
    for k in (6, nd.DEFAULT_MAX_DISTANCE):
        stats = nd.PairStats()
        found = sum(i.size for i, _, _ in nd.hash_pairs(hashes, k, stats))
        assert stats.compared < all_pairs / 50, (k, stats.compared, stats.plan)
        assert found == stats.hash_pairs <= stats.compared
    small = nd.PairStats()
    sum(i.size for i, _, _ in nd.hash_pairs(hashes[:2000], nd.DEFAULT_MAX_DISTANCE, small))
    assert stats.compared < 25 * small.compared, (stats.compared, small.compared)


def _alike_thumbnails(rng: np.random.Generator, n: int) -> np.ndarray:
    """Thumbnails of three "products": each a base picture plus noise of four strengths (some near twins)."""
    yy, xx = np.mgrid[0:32, 0:32]
    bases = [120 + 60 * np.sin(xx / (3 + p) + p) * np.cos(yy / (4 + p)) for p in range(3)]
    out = [bases[k % 3] + rng.normal(0, [0.3, 1, 3, 10][k % 4], (32, 32)) for k in range(n)]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_dense_buckets_are_compared_as_blocks_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Alike pictures (one product) fill a few buckets: the block path finds exactly brute force's pairs,
    and the verified pairs are exactly those within the distance whose r reaches the threshold."""
    rng = np.random.default_rng(4)
    thumbs = _alike_thumbnails(rng, 1200)
    hashes = np.array([nd.phash_bits(t) for t in thumbs], dtype=np.uint64)
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    upper = np.triu(np.ones(dist.shape, dtype=bool), 1)
    corr = np.corrcoef(thumbs.reshape(len(thumbs), -1).astype(np.float64))
    blocks = []
    real_block = nd._Chunk.block

    def counting_block(self: nd._Chunk, *args: object) -> object:
        blocks.append(1)
        return real_block(self, *args)

    monkeypatch.setattr(nd._Chunk, "block", counting_block)
    default = nd._BLOCK_PAIRS
    for k in (4, 8):
        for block_pairs in (default, 1 << 62):  # with blocks, and everything listed pair by pair
            monkeypatch.setattr(nd, "_BLOCK_PAIRS", block_pairs)
            blocks.clear()
            got: list[tuple[int, int]] = []
            for i, j, _ in nd.hash_pairs(hashes, k):
                got += zip(i.tolist(), j.tolist(), strict=True)
            a, b = np.nonzero((dist <= k) & upper)
            assert len(got) == len(set(got)) and set(got) == set(zip(a.tolist(), b.tolist(), strict=True))
            assert bool(blocks) == (block_pairs == default)
            stats = nd.PairStats()
            twins = nd.twin_pairs(hashes, thumbs, k, 0.999, stats)
            a, b = np.nonzero((dist <= k) & upper & (corr >= 0.999))
            assert [(i, j) for i, j, _, _ in twins] == sorted(zip(a.tolist(), b.tolist(), strict=True))
            assert stats.hash_pairs == int(((dist <= k) & upper).sum())
            assert 0 < len(twins) < stats.hash_pairs


def test_verifier_bound_never_drops_a_twin() -> None:
    """The projection lower bound rejects only pairs whose exact r is below the threshold."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (32, 32)).astype(np.float64)
    thumbs = []
    for k in range(300):  # alike pictures at a spread of correlations with the base, some near 1
        noise = rng.normal(0, [0.3, 1, 3, 10][k % 4], (32, 32))
        thumbs.append(np.clip(np.rint(base + noise), 0, 255).astype(np.uint8))
    thumbs.append(np.full((32, 32), 7, np.uint8))
    thumbs.append(np.full((32, 32), 9, np.uint8))
    t = np.stack(thumbs)
    iu = np.triu_indices(len(t), 1)
    i, j = iu[0].astype(np.int64), iu[1].astype(np.int64)
    for r_min in (0.99, 0.999, 0.9997):
        v = nd.Verifier(t, r_min)
        r = v.exact(i, j)
        assert set(np.flatnonzero(r >= r_min)) <= set(v.passing(i, j))
    flat = np.corrcoef(t[:5].reshape(5, -1).astype(np.float64))
    assert np.allclose(nd.correlations(t, np.array([0, 1]), np.array([1, 2])), [flat[0, 1], flat[1, 2]])
    assert nd.correlations(t, np.array([len(t) - 2]), np.array([len(t) - 1]))[0] == 1.0  # two flat pictures


def test_pictures_read_as_the_trainer_loads_them(tmp_path: Path) -> None:
    """16-bit grey, palette, alpha and CMYK pictures hash like their 8-bit RGB rendering."""
    yy, xx = np.mgrid[0:96, 0:128]
    grey = (60 + 50 * np.sin(xx / 7.0) + 40 * np.cos(yy / 11.0)).clip(0, 255)
    Image.fromarray(grey.astype(np.uint8)).save(tmp_path / "g8.png")
    Image.fromarray((grey * 16).astype(np.uint16)).save(tmp_path / "g16.png")  # 12-bit data in 16 bits
    Image.fromarray(grey.astype(np.uint8)).convert("RGB").quantize(64).save(tmp_path / "p.png")
    Image.fromarray(grey.astype(np.uint8)).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[..., :3] = grey.astype(np.uint8)[..., None]
    rgba[..., 3] = 255
    rgba[:, :40, 3] = 0  # transparent strip: white in the trainer's picture
    Image.fromarray(rgba).save(tmp_path / "a.png")
    over_white = grey.copy()
    over_white[:, :40] = 255
    Image.fromarray(over_white.astype(np.uint8)).save(tmp_path / "a_ref.png")
    ref = nd.fingerprint(tmp_path / "g8.png")
    for name in ("g16.png", "p.png", "c.jpg"):
        other = nd.fingerprint(tmp_path / name)
        r = nd.correlations(np.stack([ref.thumb, other.thumb]), np.array([0]), np.array([1]))[0]
        assert r > 0.999, name
        assert bin(ref.hash ^ other.hash).count("1") <= nd.DEFAULT_MAX_DISTANCE, name
    assert np.array_equal(
        nd.fingerprint(tmp_path / "a.png").thumb, nd.fingerprint(tmp_path / "a_ref.png").thumb
    )


def test_unreadable_pictures_are_reported_not_fatal(planted: Planted, tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    pictures = [
        *_pictures(planted)[:3],
        nd.Picture(str(bad), "broken.jpg", "x"),
        nd.Picture("/nope.png", "gone", "x"),
    ]
    result = nd.find_near_duplicates(pictures, tmp_path / "c.json", workers=1)
    assert set(result.unreadable) == {"broken.jpg", "gone"}
    assert result.pictures == 3
    assert "broken" not in (tmp_path / "c.json").read_text(encoding="utf-8")


def _twin_set(*names: str) -> nd.TwinSet:
    return nd.TwinSet(tuple(sorted(names)), len(names) - 1, 1, 2, 0.9999)


def test_merged_groups_join_folders_transitively() -> None:
    group_of = {"a": "b1", "b": "b2", "c": "b2", "d": "b3", "e": "b4", "f": "b4", "g": "b5"}
    sets = [_twin_set("a", "b"), _twin_set("c", "d"), _twin_set("e", "f")]
    assert nd.merged_groups(sets, group_of) == {
        "b1": "b1",
        "b2": "b1",
        "b3": "b1",
    }  # b4: one folder, b5: none


def test_annotation_conflicts() -> None:
    crack = nd.Annotation.from_boxes("abnormal", [((100, 100, 200, 150), "crack")], 1000, 800)
    resized = nd.Annotation.from_boxes("abnormal", [((90, 90, 180, 135), "crack")], 900, 720)
    redrawn = nd.Annotation.from_boxes("abnormal", [((104, 98, 204, 152), "crack")], 1000, 800)
    moved = nd.Annotation.from_boxes("abnormal", [((500, 500, 600, 550), "crack")], 1000, 800)
    stain = nd.Annotation.from_boxes("abnormal", [((100, 100, 200, 150), "stain")], 1000, 800)
    normal = nd.Annotation("normal")
    assert nd.conflict(crack, resized) is None
    assert nd.conflict(crack, redrawn) is None
    assert nd.conflict(crack, moved) == "boxes_differ"
    assert nd.conflict(crack, stain) == "labels_differ"
    assert nd.conflict(crack, normal) == "normal_vs_abnormal"
    assert nd.conflict(normal, nd.Annotation("normal")) is None


def test_report_section() -> None:
    crack = nd.Annotation.from_boxes("abnormal", [((10, 10, 50, 50), "crack")], 100, 100)
    pictures = [
        nd.Picture("/x/a.jpg", "abnormal/b1/a.jpg", "b1", crack),
        nd.Picture("/x/a.png", "abnormal/b2/a.png", "b2", crack),
        nd.Picture("/x/n.jpg", "normal/b3/n.jpg", "b3", nd.Annotation("normal")),
        nd.Picture("/x/m.jpg", "abnormal/b3/m.jpg", "b3", crack),
    ]
    result = nd.NearDuplicates(
        [
            _twin_set("abnormal/b1/a.jpg", "abnormal/b2/a.png"),
            _twin_set("normal/b3/n.jpg", "abnormal/b3/m.jpg"),
        ],
        nd.DEFAULT_MAX_DISTANCE,
        nd.DEFAULT_MIN_CORRELATION,
        pictures=4,
    )
    alone = {"abnormal/b1/a.jpg": "train", "abnormal/b2/a.png": "test", "normal/b3/n.jpg": "val",
             "abnormal/b3/m.jpg": "val"}  # fmt: skip
    section = nd.report_section(result, "report", pictures, alone)
    documented = {k for k in nd.REPORT_KEYS if not k.startswith("sets[]")}
    assert set(section) == documented
    first, second = section["sets"]
    assert [m["image"] for m in first["images"]] == ["abnormal/b1/a.jpg", "abnormal/b2/a.png"]
    assert first["splits_alone"] == ["test", "train"] and first["across_splits"] is True
    assert first["splits"] == ["test", "train"] and first["label_conflict"] is False
    assert second["across_splits"] is False and second["label_conflict"] is True
    assert second["conflicts"] == ["normal_vs_abnormal"]
    assert (section["set_count"], section["sets_across_splits"], section["label_conflicts"]) == (2, 1, 1)
    per_set = {k.removeprefix("sets[].") for k in nd.REPORT_KEYS if k.startswith("sets[].")}
    assert set(first) == (per_set - {"images[]"}) | {"images"}
    # group: the folders were merged, the members share a split now
    grouped = nd.report_section(result, "group", pictures, alone, {**alone, "abnormal/b2/a.png": "train"})
    assert grouped["sets"][0]["splits"] == ["train"] and grouped["sets_split_now"] == 0
    assert grouped["sets_across_splits"] == 1
    assert nd.report_section(None, "off", pictures, alone) == {"mode": "off", "sets": []}
    json.dumps(section)  # plain JSON
