"""Near-duplicate pictures (twins) across a dataset: hashed, paired without comparing all pairs, verified.

The same part is often photographed more than once and the pictures land in different folders (a re-shot,
one frame exported as PNG and as JPEG or resized for the labelling tool, merged datasets). Split groups are
folders, so such twins can sit in train and in the blind test. This module finds them:

1. **Hash** every picture *as the trainer loads it* (EXIF orientation applied; 16/32-bit and float grey
   scaled to 8 bits; palette/CMYK converted; alpha over white) with a 64-bit DCT pHash, imagehash 4.3.2's
   definition: 32x32 grey (LANCZOS), 2-D DCT-II, the top-left 8x8 coefficients above their median, bits
   row-major with the first as the most significant. The 32x32 grey picture it is computed from is kept as
   the thumbnail (1 KB). Decoding is the cost, so JPEGs are decoded at 1/2..1/8 scale by libjpeg
   (``draft``) and every picture is box-reduced before LANCZOS (``reducing_gap``), with the geometry kept
   exact (twins decoded by different paths still agree); a process pool decodes in parallel (output
   identical to one process), and a JSON cache keyed by (path, size, mtime_ns) means a rerun decodes
   nothing that did not change.
2. **Pair** pictures whose hashes differ in at most ``max_distance`` bits by multi-index hashing (the hash
   cut into m chunks; two hashes within distance k agree within ``k // m`` bits on at least one chunk, so
   only pictures sharing a probed chunk value are compared; m is chosen from n and k so the expected
   comparisons stay near-linear in n for spread-out hashes).
3. **Verify** each hash pair on the pixels: pictures of one product from one camera are alike by design and
   their hashes are close too (on the benchmark most sibling pictures have another within 4 bits), so a
   pair is called a twin only when the Pearson correlation of the two mean-subtracted 32x32 grey
   thumbnails is at least ``min_correlation``. Siblings are far below it, so an exact lower bound on 64
   principal directions rejects nearly all of them before the exact (integer) correlation is computed.
   The hash-near pairs of one product grow with the square of its pictures (a fixed fraction of all its
   pairs), at about 0.2 microseconds each; see BENCHMARKS.md. A picture whose thumbnail is one grey level
   (a blank frame) is not paired at all: its hash is a constant and r is undefined (``flat``).
4. **Group** verified pairs with union-find into sets; :func:`report_section` turns the sets, with each
   member's would-be split and annotation, into ``prepare_report.json``'s ``near_duplicates`` section, and
   :func:`merged_groups` gives the split-group merge that ``near_duplicates: group`` applies before splitting.

Thresholds are chosen on the evidence of ``bench/near_duplicates.py`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import ExifTags, Image
from scipy.fft import dct
from scipy.linalg import eigh
from tqdm import tqdm

from qwenvl_roi.fileio import atomic_open

from .names import shown

MODES = ("group", "report", "off")
Mode = Literal["group", "report", "off"]
# Defaults chosen on bench/near_duplicates.py's evidence (BENCHMARKS.md, "Near-duplicate pictures").
DEFAULT_MODE: Mode = "report"
DEFAULT_MAX_DISTANCE = 8  # bits of 64 (pHash distances are even: 8 is one step above the twins seen)
DEFAULT_MIN_CORRELATION = 0.9995  # Pearson r of the 32x32 grey thumbnails

HASH_SIDE = 8  # 8x8 DCT coefficients -> 64 bits
THUMB_SIDE = 32  # the grey picture the DCT is taken of, kept as the verification thumbnail
REDUCE_TO = 4 * THUMB_SIDE  # JPEG: libjpeg decodes at a scale leaving at least this many pixels a side
REDUCING_GAP = 4.0  # then box-reduce to at least REDUCING_GAP x 32 a side before LANCZOS to 32
CACHE_VERSION = 1
RECIPE = (
    f"phash{HASH_SIDE * HASH_SIDE};thumb{THUMB_SIDE};draft{REDUCE_TO};gap{REDUCING_GAP:g};v{CACHE_VERSION}"
)
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
ALPHA_MODES = frozenset({"RGBA", "LA", "La", "RGBa", "PA"})
# EXIF orientation -> the transpose that shows the picture upright (PIL.ImageOps.exif_transpose's table)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_MAX_PROBES = 50_000  # chunk values probed per chunk at most (the ball of radius k // m)
_PROBE_COST = 12  # one probe of one picture costs about 12 listed comparisons (measured, n = 100,000)
_PAIR_BATCH = 1 << 20  # candidate pairs listed at once (bounds memory on clustered hashes)
_BLOCK_PAIRS = 1 << 14  # two probed buckets with this many pairs are compared as a block ...
_BLOCK_SIDE = 1024  # ... in tiles of at most this many x this many pictures (8 MiB of XORs)
_VERIFY_BATCH = 1 << 16  # pairs checked against the projection bound at once (2 x 16 MiB of float32)
_EXACT_BATCH = 1 << 12  # pairs whose exact r is computed at once (2 x 32 MiB of int64)
PROJECTION_DIMS = 64  # principal directions of the thumbnails used for the lower bound


# --- hashing ---------------------------------------------------------------------------------------------


def phash_bits(grey32: np.ndarray) -> int:
    """imagehash.phash of a 32x32 grey picture as a 64-bit int (first coefficient = most significant bit)."""
    coeffs = dct(dct(np.asarray(grey32, dtype=np.float64), type=2, axis=0), type=2, axis=1)
    low = coeffs[:HASH_SIDE, :HASH_SIDE]
    bits = (low > np.median(low)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def grey_thumbnail(im: Image.Image) -> np.ndarray:
    """The 32x32 grey picture imagehash.phash hashes (``convert('L')``, LANCZOS), as uint8."""
    grey = im if im.mode == "L" else im.convert("L")
    return np.asarray(grey.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS), dtype=np.uint8)


def phash_image(im: Image.Image) -> int:
    """imagehash.phash(im) (hash_size 8) as a 64-bit int, without decoding tricks: the reference."""
    return phash_bits(grey_thumbnail(im))


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 2-8, else 1 (absent, invalid or unreadable EXIF: used as stored, like images.py)."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # corrupt EXIF raises many types
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _to_grey(im: Image.Image) -> Image.Image:
    """The trainer's picture as 8-bit grey: high bit depths scaled, alpha over white, other modes via RGB.

    High bit depths are scaled by the picture's own maximum, not the dataset's bit depth: a positive scale
    factor changes neither the pHash (signs against the median) nor the correlation, up to rounding.
    """
    if im.mode in HIGH_DEPTH_MODES:
        arr = np.asarray(im, dtype=np.float64)
        arr = np.where(np.isfinite(arr), arr, 0.0).clip(0.0, None)
        top = float(arr.max())
        if top > 0:
            arr = arr * (255.0 / top)
        return Image.fromarray(np.rint(arr).astype(np.uint8))
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("L")
    if im.mode == "L":
        return im
    if im.mode in ("RGB", "1"):
        return im.convert("L")
    return im.convert("RGB").convert("L")  # P, CMYK, YCbCr, ...: as the trainer's convert("RGB") sees them


def trainer_thumbnail(path: str | os.PathLike[str], reduced: bool = True) -> np.ndarray:
    """The 32x32 grey thumbnail (uint8) of the picture the trainer loads, upright.

    ``reduced`` (the fast path): a JPEG is decoded by libjpeg at 1/2..1/8 scale (``draft``, at least
    REDUCE_TO pixels a side) and LANCZOS reads the exact extent ``draft`` reports (a rounded-up last block
    would shift the picture by up to a pixel of the reduced size); every format is box-reduced first to at
    least REDUCING_GAP x 32 a side (PIL's ``reducing_gap``, which keeps the geometry exact), and the
    orientation is applied to the 32x32 result. Not reduced: imagehash's pipeline on the upright picture.
    """
    box = None
    with warnings.catch_warnings():  # huge industrial pictures are fine: they are reduced at once
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # a damaged EXIF block only warns, and prepare reports it for the image already (images.inspect)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        with Image.open(path) as im:
            if reduced and im.format == "JPEG":
                got = im.draft("L" if im.mode == "RGB" else None, (REDUCE_TO, REDUCE_TO))
                box = got[1] if got else None
            im.load()
            orientation = _orientation(im)
            grey = _to_grey(im)
            if not reduced and orientation != 1:
                grey = grey.transpose(_TRANSPOSE[orientation])
            thumb = grey.resize(
                (THUMB_SIDE, THUMB_SIDE),
                Image.Resampling.LANCZOS,
                box=box,
                reducing_gap=REDUCING_GAP if reduced else None,
            )
    if reduced and orientation != 1:
        thumb = thumb.transpose(_TRANSPOSE[orientation])
    return np.asarray(thumb, dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """A picture's 64-bit pHash and the 32x32 grey thumbnail it was computed from (verification)."""

    hash: int
    thumb: np.ndarray  # (32, 32) uint8


def fingerprint(path: str | os.PathLike[str], reduced: bool = True) -> Fingerprint:
    """Decode (reduced) and hash one picture; raises what PIL raises for unreadable files."""
    thumb = trainer_thumbnail(path, reduced)
    return Fingerprint(phash_bits(thumb), thumb)


def _fingerprint_or_error(path: str) -> tuple[int, bytes] | str:
    """A worker's unit of work: (hash, thumbnail bytes), or why the picture cannot be read."""
    try:
        fp = fingerprint(path)
    except Exception as exc:  # PIL raises many types for corrupt files
        return f"{type(exc).__name__}: {exc}"
    return fp.hash, fp.thumb.tobytes()


def default_workers() -> int:
    """Worker processes for hashing: the CPUs this process may use, at most 8 (decoding is the cost)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


@dataclass
class Hashes:
    """hash_pictures' result: fingerprints by path, unreadable pictures with the reason, decode counts."""

    fingerprints: dict[str, Fingerprint]
    errors: dict[str, str] = field(default_factory=dict)
    decoded: int = 0  # pictures decoded in this run
    cached: int = 0  # pictures whose fingerprint came from the cache (size and mtime_ns unchanged)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _load_cache(cache_file: Path | None) -> dict[str, Any]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if (
        not isinstance(data, dict)
        or data.get("recipe") != RECIPE
        or not isinstance(data.get("pictures"), dict)
    ):
        return {}
    return data["pictures"]


def _from_cache(entry: Any, stamp: tuple[int, int]) -> Fingerprint | None:
    if not isinstance(entry, dict) or (entry.get("size"), entry.get("mtime_ns")) != stamp:
        return None
    try:
        thumb = np.frombuffer(base64.b64decode(entry["thumb"], validate=True), dtype=np.uint8)
        value = int(entry["hash"], 16)
    except (KeyError, TypeError, ValueError):
        return None
    if thumb.size != THUMB_SIDE * THUMB_SIDE or not 0 <= value < 2**64:
        return None
    return Fingerprint(value, thumb.reshape(THUMB_SIDE, THUMB_SIDE))


def hash_pictures(
    paths: Sequence[str],
    cache_file: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    progress: bool | None = False,
) -> Hashes:
    """Fingerprint every picture, reusing ``cache_file`` entries whose (size, mtime_ns) are unchanged.

    ``workers``: processes that decode (None: :func:`default_workers`; 1: this process); the result does not
    depend on it. The cache is rewritten (atomically) with exactly the pictures of this call, keyed by path
    as given (undecodable bytes of a non-UTF-8 name as \\xNN), so pass stable absolute paths of the original
    files, not of copies in a staging folder. Unreadable pictures are in ``errors`` (never cached).
    """
    cache_path = Path(cache_file) if cache_file is not None else None
    old = _load_cache(cache_path)
    result = Hashes({})
    stamps: dict[str, tuple[int, int]] = {}
    todo: list[str] = []
    for p in paths:
        if p in result.fingerprints or p in stamps:
            continue
        stamp = _stamp(p)
        if stamp is None:
            result.errors[p] = "cannot stat file"
            continue
        stamps[p] = stamp
        hit = _from_cache(old.get(shown(p)), stamp)
        if hit is not None:
            result.fingerprints[p] = hit
            result.cached += 1
        else:
            todo.append(p)
    n_workers = default_workers() if workers is None else max(1, workers)
    n_workers = min(n_workers, max(1, len(todo) // 16))  # a pool is not worth starting for a few pictures
    disable = None if progress is None else not progress  # None: a bar only on a terminal (as prepare)
    bar = tqdm(total=len(todo), desc="near-duplicates: hash", unit="img", disable=disable)
    with bar:
        if n_workers == 1:
            outcomes: Iterator[tuple[int, bytes] | str] = map(_fingerprint_or_error, todo)
            for p, got in zip(todo, outcomes, strict=True):
                _take(result, p, got)
                bar.update()
        else:
            chunk = max(1, min(64, len(todo) // (n_workers * 8)))
            with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool:
                for p, got in zip(todo, pool.map(_fingerprint_or_error, todo, chunksize=chunk), strict=True):
                    _take(result, p, got)
                    bar.update()
    if cache_path is not None:
        _write_cache(cache_path, old, result, stamps)
    return result


def _take(result: Hashes, path: str, got: tuple[int, bytes] | str) -> None:
    if isinstance(got, str):
        result.errors[path] = got
        return
    value, raw = got
    result.fingerprints[path] = Fingerprint(
        value, np.frombuffer(raw, dtype=np.uint8).reshape(THUMB_SIDE, THUMB_SIDE)
    )
    result.decoded += 1


def _write_cache(
    cache_path: Path, old: dict[str, Any], result: Hashes, stamps: dict[str, tuple[int, int]]
) -> None:
    """Rewrite the cache with this call's pictures (sorted keys: the same input gives the same bytes)."""
    pictures = {}
    for p, fp in result.fingerprints.items():
        size, mtime_ns = stamps[p]
        pictures[shown(p)] = {
            "size": size,
            "mtime_ns": mtime_ns,
            "hash": f"{fp.hash:016x}",
            "thumb": base64.b64encode(fp.thumb.tobytes()).decode("ascii"),
        }
    if not result.decoded and pictures == old:
        return  # unchanged: leave the file (it may be a hard link into the previous output set)
    with atomic_open(cache_path) as fh:
        json.dump({"version": CACHE_VERSION, "recipe": RECIPE, "pictures": pictures}, fh, sort_keys=True)
        fh.write("\n")


# --- candidate pairs: multi-index hashing ---------------------------------------------------------------


def _ball_size(bits: int, radius: int) -> int:
    return sum(math.comb(bits, r) for r in range(radius + 1))


@dataclass(frozen=True)
class IndexPlan:
    """How the 64-bit hash is cut: chunk widths (most significant first) and the radius probed per chunk."""

    widths: tuple[int, ...]
    radius: int


def plan_index(n: int, max_distance: int) -> IndexPlan:
    """The chunking with the least expected work (probes + candidate pairs) for n uniform hashes.

    Pigeonhole: if two hashes differ in at most k bits, one of m chunks differs in at most k // m bits. Few
    wide chunks mean many probes per picture (a ball of radius k // m), many narrow ones mean many
    accidental chunk collisions; the best m keeps chunks about log2(n) bits wide.
    """
    k = max(0, max_distance)
    best: tuple[float, IndexPlan] | None = None
    for m in range(1, min(k + 1, 64) + 1):
        widths = tuple(64 // m + (1 if c < 64 % m else 0) for c in range(m))
        radius = k // m
        balls = [_ball_size(w, radius) for w in widths]
        if max(balls) > _MAX_PROBES:
            continue
        cost = sum(_PROBE_COST * b * n + b * n * n / 2.0**w for b, w in zip(balls, widths, strict=True))
        if best is None or cost < best[0]:
            best = (cost, IndexPlan(widths, radius))
    assert best is not None  # m = k + 1 (radius 0) always qualifies
    return best[1]


def _ball(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-bit mask with at most ``radius`` bits set, as uint64 (0 first)."""
    masks = [0]
    for r in range(1, radius + 1):
        masks += [sum(1 << b for b in combo) for combo in itertools.combinations(range(bits), r)]
    return np.array(masks, dtype=np.uint64)


@dataclass
class PairStats:
    """How much work the pair search did: ``compared`` Hamming distances computed (duplicates included)."""

    compared: int = 0
    hash_pairs: int = 0  # distinct pairs within max_distance
    plan: IndexPlan | None = None


BlockBound = Callable[[np.ndarray, np.ndarray], np.ndarray]


def hash_pairs(
    hashes: np.ndarray,
    max_distance: int,
    stats: PairStats | None = None,
    block_bound: BlockBound | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
    """Batches (i, j, bounded) of the pairs of ``hashes`` (uint64) within ``max_distance`` bits, i < j,
    each pair exactly once (in the first chunk that finds it), a batch at most about _PAIR_BATCH pairs.

    Pictures sharing a chunk value form a bucket. A small bucket's pairs are listed one by one; when two
    probed buckets hold at least _BLOCK_PAIRS pairs (alike pictures of one product), they are compared as
    a block of distance matrices, and ``block_bound(a, b)`` (a boolean matrix, e.g. Verifier.block), if
    given, drops pairs there already: such batches come with ``bounded`` True. ``stats.compared`` counts
    the Hamming distances computed (a pair found through several chunks each time), ``stats.hash_pairs``
    the distinct pairs within max_distance.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = h.size
    stats = stats if stats is not None else PairStats()
    if n < 2:
        return
    plan = plan_index(n, max_distance)
    stats.plan = plan
    index = np.arange(n, dtype=np.int64)
    shifts = list(itertools.accumulate(plan.widths, lambda acc, w: acc - w, initial=64))[1:]
    chunk_masks = [np.uint64((1 << w) - 1) for w in plan.widths]
    for c, (width, shift) in enumerate(zip(plan.widths, shifts, strict=True)):
        values = (h >> np.uint64(shift)) & chunk_masks[c]
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        buckets, starts, sizes = np.unique(ordered, return_index=True, return_counts=True)
        bucket_of = np.searchsorted(buckets, values)
        search = _Chunk(
            h, max_distance, plan.radius, list(zip(shifts[:c], chunk_masks[:c], strict=True)), stats
        )
        dense = int(sizes.max()) ** 2 >= 2 * _BLOCK_PAIRS  # some buckets may pair up into blocks
        for mask in _ball(width, plan.radius):
            probe = values ^ mask
            lo = np.searchsorted(ordered, probe, side="left")
            counts = np.searchsorted(ordered, probe, side="right") - lo
            big = np.zeros(0, dtype=bool)
            if dense:  # bucket pairs (u, u ^ mask) big enough for the block path
                partner = np.searchsorted(buckets, buckets ^ mask).clip(0, buckets.size - 1)
                big = (buckets[partner] == (buckets ^ mask)) & (sizes * sizes[partner] >= 2 * _BLOCK_PAIRS)
                counts[big[bucket_of]] = 0  # those queries are answered by the blocks below
            yield from search.listed(index, order, lo, counts)
            for u in np.flatnonzero(big).tolist():
                v = int(partner[u])
                if u > v:
                    continue  # the bucket pair (v, u) is the same block
                members_u = order[starts[u] : starts[u] + sizes[u]]
                members_v = order[starts[v] : starts[v] + sizes[v]]
                yield from search.block(members_u, members_v, u == v, block_bound)


class _Chunk:
    """The pair search within one chunk: listed pairs of small buckets, blocks of big ones."""

    def __init__(
        self,
        h: np.ndarray,
        max_distance: int,
        radius: int,
        earlier: list[tuple[int, np.uint64]],
        stats: PairStats,
    ):
        self.h = h
        self.k = max_distance
        self.radius = radius
        self.earlier = [(np.uint64(s), m) for s, m in earlier]
        self.stats = stats

    def _first(self, x: np.ndarray) -> np.ndarray:
        """Pairs (as XORs of their hashes) that no earlier chunk finds: each pair comes out once."""
        first = np.ones(x.shape, dtype=bool)
        for s, m in self.earlier:
            first &= np.bitwise_count((x >> s) & m) > self.radius
        return first

    def listed(
        self, index: np.ndarray, order: np.ndarray, lo: np.ndarray, counts: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """The pairs (query, each picture in its probed range), in slices of about _PAIR_BATCH pairs."""
        ends = np.cumsum(counts)
        total = int(ends[-1])
        start_q = 0
        done = 0
        while done < total:
            stop_q = max(int(np.searchsorted(ends, done + _PAIR_BATCH, side="right")), start_q + 1)
            c = counts[start_q:stop_q]
            size = int(c.sum())
            if size:
                qi = np.repeat(index[start_q:stop_q], c)
                offset = np.arange(size, dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
                qj = order[np.repeat(lo[start_q:stop_q], c) + offset]
                keep = qi < qj
                qi, qj = qi[keep], qj[keep]
                self.stats.compared += int(qi.size)
                x = self.h[qi] ^ self.h[qj]
                ok = (np.bitwise_count(x) <= self.k) & self._first(x)
                if ok.any():
                    self.stats.hash_pairs += int(ok.sum())
                    yield qi[ok], qj[ok], False
            done += size
            start_q = stop_q

    def block(
        self, a_all: np.ndarray, b_all: np.ndarray, same: bool, bound: BlockBound | None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """Every pair between two buckets (within one when ``same``) as tiles of distance matrices."""
        for s in range(0, a_all.size, _BLOCK_SIDE):
            for t in range(s if same else 0, b_all.size, _BLOCK_SIDE):
                a, b = a_all[s : s + _BLOCK_SIDE], b_all[t : t + _BLOCK_SIDE]
                x = self.h[a][:, None] ^ self.h[b][None, :]
                ok = np.bitwise_count(x) <= self.k
                if same and s == t:  # a tile on the diagonal: each pair once
                    ok &= np.triu(np.ones(ok.shape, dtype=bool), 1)
                    self.stats.compared += a.size * (a.size - 1) // 2
                else:
                    self.stats.compared += a.size * b.size
                ok &= self._first(x)
                self.stats.hash_pairs += int(ok.sum())
                if bound is not None and ok.any():
                    ok &= bound(a, b)
                ia, ib = np.nonzero(ok)
                if ia.size:
                    i, j = a[ia], b[ib]
                    yield np.minimum(i, j), np.maximum(i, j), bound is not None


# --- verification and sets -------------------------------------------------------------------------------


class Verifier:
    """Pearson r of 32x32 thumbnails for many pairs, exactly and cheaply.

    r is computed from integer sums (exact in float64, so the same on every machine and worker count).
    Most hash-near pairs are alike siblings far below the threshold; a lower bound rejects them first:
    with z the mean-subtracted unit-norm thumbnail, r = z_a . z_b and |z_a - z_b|^2 = 2 (1 - r), and any
    orthonormal projection P only shortens a vector, so |P z_a - P z_b|^2 > 2 (1 - min_correlation) proves
    r < min_correlation. P holds the PROJECTION_DIMS directions along which the pictures vary most
    (principal components of a fixed sample), so siblings' differences show in it: 64 floats per pair
    instead of 1024 bytes.
    """

    def __init__(self, thumbs: np.ndarray, min_correlation: float, bound: bool = True):
        flat = thumbs.reshape(thumbs.shape[0], -1)
        self.flat = flat
        self.n_px = flat.shape[1]
        self.sums = flat.sum(axis=1, dtype=np.int64)
        self.sq = np.einsum("ij,ij->i", flat.astype(np.int64), flat.astype(np.int64))
        var = self.n_px * self.sq - self.sums * self.sums  # n_px^2 x variance, exact
        self.flat_pic = var == 0
        self.limit = 2.0 * (1.0 - min_correlation) * (1 + 1e-3) + 1e-5  # slack for float32 rounding
        if bound:  # the exact correlation alone needs none of this
            self.proj = self._project(flat, var)
            self.proj_sq = np.einsum("ij,ij->i", self.proj, self.proj, dtype=np.float64)

    def _z(self, rows: np.ndarray, var: np.ndarray) -> np.ndarray:
        z = rows.astype(np.float32)
        z -= z.mean(axis=1, keepdims=True)
        norm = np.sqrt(var.astype(np.float64) / self.n_px).astype(np.float32)
        return z / np.where(norm > 0, norm, 1.0)[:, None]

    def _project(self, flat: np.ndarray, var: np.ndarray) -> np.ndarray:
        n = flat.shape[0]
        take = np.unique(np.linspace(0, n - 1, min(n, 4096)).astype(np.int64))  # fixed sample: deterministic
        z = self._z(flat[take], var[take]).astype(np.float64)
        z -= z.mean(axis=0)
        dims = min(PROJECTION_DIMS, self.n_px)
        _, vecs = eigh(z.T @ z, subset_by_index=[self.n_px - dims, self.n_px - 1])
        basis = np.ascontiguousarray(vecs[:, ::-1], dtype=np.float32)
        out = np.empty((n, basis.shape[1]), dtype=np.float32)
        for s in range(0, n, 8192):
            out[s : s + 8192] = self._z(flat[s : s + 8192], var[s : s + 8192]) @ basis
        return out

    def exact(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Pearson r of each pair (two flat thumbnails count as r = 1, one flat as 0)."""
        if i.size > _EXACT_BATCH:
            parts = [
                self.exact(i[s : s + _EXACT_BATCH], j[s : s + _EXACT_BATCH])
                for s in range(0, i.size, _EXACT_BATCH)
            ]
            return np.concatenate(parts)
        a = self.flat[i].astype(np.int64)
        b = self.flat[j].astype(np.int64)
        cross = self.n_px * np.einsum("ij,ij->i", a, b) - self.sums[i] * self.sums[j]
        va = self.n_px * self.sq[i] - self.sums[i] ** 2
        vb = self.n_px * self.sq[j] - self.sums[j] ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cross.astype(np.float64) / np.sqrt(va.astype(np.float64) * vb.astype(np.float64))
        fa, fb = self.flat_pic[i], self.flat_pic[j]
        return np.clip(np.where(fa | fb, (fa & fb).astype(np.float64), r), -1.0, 1.0)

    def block(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The bound for every pair (a[x], b[y]) at once (a matrix product): False where it proves r is
        below the threshold."""
        cross = self.proj[a].astype(np.float64) @ self.proj[b].astype(np.float64).T
        close = self.proj_sq[a][:, None] + self.proj_sq[b][None, :] - 2.0 * cross <= self.limit
        return close | self.flat_pic[a][:, None] | self.flat_pic[b][None, :]

    def passing(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Indices k of the pairs (i[k], j[k]) that the projection bound cannot reject."""
        keep = []
        for s in range(0, i.size, _VERIFY_BATCH):
            d = self.proj[i[s : s + _VERIFY_BATCH]] - self.proj[j[s : s + _VERIFY_BATCH]]
            close = np.einsum("ij,ij->i", d, d) <= self.limit
            close |= self.flat_pic[i[s : s + _VERIFY_BATCH]] | self.flat_pic[j[s : s + _VERIFY_BATCH]]
            keep.append(np.flatnonzero(close) + s)
        return np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)


def correlations(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pearson r of the thumbnails of each pair (i[k], j[k]), exact (see Verifier)."""
    return Verifier(thumbs, 1.0, bound=False).exact(np.asarray(i), np.asarray(j))


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class Annotation:
    """What a picture is labelled: ``abnormal`` with boxes (label, x1/W, y1/H, x2/W, y2/H in the displayed
    frame, so a resized or EXIF-rotated twin compares equal) or ``normal`` (no boxes)."""

    source: str
    boxes: tuple[tuple[str, float, float, float, float], ...] = ()

    @classmethod
    def from_boxes(
        cls,
        source: str,
        boxes: Sequence[tuple[tuple[float, float, float, float], str]],
        width: int,
        height: int,
    ) -> Annotation:
        """From prepare's ``ImageEntry.boxes`` ((x1, y1, x2, y2) in pixels, canonical label) and its size."""
        rel = ((label, b[0] / width, b[1] / height, b[2] / width, b[3] / height) for b, label in boxes)
        return cls(source, tuple(sorted(rel)))


@dataclass(frozen=True)
class Picture:
    """One picture prepare uses: the file to decode, its name as the datasets/report write it, its split
    group and its annotation."""

    path: str  # the original file (stable: the cache is keyed by it), read as the trainer's picture
    name: str  # unique, e.g. "abnormal/b1/IMG_0001.jpg" (source/rel as in sample_id) or the dataset path
    group: str  # split group key (split.group_key)
    annotation: Annotation = Annotation("normal")


@dataclass(frozen=True)
class TwinSet:
    """Pictures the hash paired and the pixels confirmed, joined transitively (union-find over pairs)."""

    members: tuple[str, ...]  # Picture.name, sorted
    pairs: int  # verified pairs inside the set
    distance_min: int  # Hamming distance over the verified pairs
    distance_max: int
    correlation_min: float  # the weakest verified link (Pearson r of the thumbnails)


@dataclass
class NearDuplicates:
    """find_near_duplicates' result: the sets, and the work and evidence counts for the report."""

    sets: list[TwinSet]
    max_distance: int
    min_correlation: float
    pictures: int = 0  # hashed
    decoded: int = 0
    cached: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # Picture.name -> reason
    flat: int = 0  # hashed but left unpaired: a thumbnail of one grey level (no evidence either way)
    compared: int = 0  # Hamming distances computed (the multi-index search's work)
    hash_pairs: int = 0  # pairs within max_distance
    verified_pairs: int = 0  # of those, confirmed on the pixels
    rejected_pairs: int = 0  # hash-near but the pixels differ: alike siblings a hash alone would pair


def twin_pairs(
    hashes: np.ndarray,
    thumbs: np.ndarray,
    max_distance: int,
    min_correlation: float,
    stats: PairStats | None = None,
) -> list[tuple[int, int, int, float]]:
    """(i, j, Hamming distance, r), sorted, of every pair within ``max_distance`` whose thumbnails
    correlate at ``min_correlation`` or more; ``stats`` counts the work and the hash-near pairs."""
    stats = stats if stats is not None else PairStats()
    out: list[tuple[int, int, int, float]] = []
    verifier = Verifier(thumbs, min_correlation) if len(hashes) > 1 else None
    if verifier is None:
        return out
    for i, j, bounded in hash_pairs(hashes, max_distance, stats, verifier.block):
        if not bounded:
            near = verifier.passing(i, j)
            i, j = i[near], j[near]
        r = verifier.exact(i, j)
        ok = r >= min_correlation
        if ok.any():
            i, j, r = i[ok], j[ok], r[ok]
            d = np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.int64)
            out += zip(i.tolist(), j.tolist(), d.tolist(), r.tolist(), strict=True)
    return sorted(out)


def find_near_duplicates(
    pictures: Sequence[Picture],
    cache_file: str | os.PathLike[str] | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    workers: int | None = None,
    progress: bool | None = False,
) -> NearDuplicates:
    """Hash every picture, pair hashes within ``max_distance`` bits (multi-index), keep pairs whose
    thumbnails correlate at ``min_correlation`` or more, and join them into sets.

    Deterministic: sets sorted by their first member, members by name, whatever ``workers`` is. A picture
    listed twice under one path is one picture; unreadable pictures are left out (``unreadable``), and so
    are pictures whose thumbnail is one grey level (``flat``): with no variance the hash is a constant and r
    is undefined, so nothing shows they are the same picture (blank frames of any brightness would all pair,
    with quadratically many pairs).
    """
    hashed = hash_pictures([p.path for p in pictures], cache_file, workers, progress)
    first_of: dict[str, Picture] = {}
    for p in pictures:
        if p.path in hashed.fingerprints:
            first_of.setdefault(p.path, p)
    usable = list(first_of.values())
    result = NearDuplicates([], max_distance, min_correlation, len(usable), hashed.decoded, hashed.cached)
    result.unreadable = {p.name: hashed.errors[p.path] for p in pictures if p.path in hashed.errors}
    if not usable:
        return result
    fps = [hashed.fingerprints[p.path] for p in usable]
    thumbs = np.stack([f.thumb for f in fps])
    flat = thumbs.reshape(len(fps), -1)
    content = np.flatnonzero(flat.min(axis=1) < flat.max(axis=1))
    result.flat = len(usable) - content.size
    if content.size < 2:
        return result
    usable, thumbs = [usable[k] for k in content.tolist()], thumbs[content]
    values = np.array([fps[k].hash for k in content.tolist()], dtype=np.uint64)
    stats = PairStats()
    verified = twin_pairs(values, thumbs, max_distance, min_correlation, stats)
    result.compared, result.hash_pairs = stats.compared, stats.hash_pairs
    result.verified_pairs = len(verified)
    result.rejected_pairs = result.hash_pairs - result.verified_pairs
    n = len(usable)
    uf = _UnionFind(n)
    for a, b, _, _ in verified:
        uf.union(a, b)
    per_set: dict[int, list[tuple[int, float]]] = {}
    for a, _, d, r in verified:
        per_set.setdefault(uf.find(a), []).append((d, r))
    members: dict[int, list[str]] = {}
    for idx, p in enumerate(usable):
        root = uf.find(idx)
        if root in per_set:
            members.setdefault(root, []).append(p.name)
    sets = []
    for root, links in per_set.items():
        dists = [d for d, _ in links]
        sets.append(
            TwinSet(
                tuple(sorted(members[root])),
                len(links),
                min(dists),
                max(dists),
                round(min(r for _, r in links), 6),
            )
        )
    result.sets = sorted(sets, key=lambda s: s.members)
    return result


# --- what prepare does with the sets ---------------------------------------------------------------------


def merged_groups(sets: Sequence[TwinSet], group_of: Mapping[str, str]) -> dict[str, str]:
    """``near_duplicates: group``: every split group that shares a twin set with another, mapped to the
    smallest group key of its merged component (groups not merged are absent: they keep their key).

    ``group_of``: Picture.name -> split group. Apply before holdout matching and split assignment, so a
    set's members share one split and a holdout picture pulls its twins' folders into test with it.
    """
    keys = sorted({group_of[m] for s in sets for m in s.members})
    pos = {g: k for k, g in enumerate(keys)}
    uf = _UnionFind(len(keys))
    for s in sets:
        for m in s.members[1:]:
            uf.union(pos[group_of[s.members[0]]], pos[group_of[m]])
    roots = [uf.find(k) for k in range(len(keys))]
    sizes = Counter(roots)
    return {g: keys[r] for g, r in zip(keys, roots, strict=True) if sizes[r] > 1}


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


BOX_MATCH_IOU = 0.5  # twins' boxes drawn twice by hand still overlap this much


def conflict(a: Annotation, b: Annotation) -> str | None:
    """Why two twins' annotations disagree (None when they agree): normal vs abnormal, other labels, or
    boxes that do not pair up one to one with the same label at IoU >= BOX_MATCH_IOU."""
    if a.source != b.source:
        return "normal_vs_abnormal"
    if sorted(x[0] for x in a.boxes) != sorted(x[0] for x in b.boxes):
        return "labels_differ"
    unmatched = list(b.boxes)
    for box in a.boxes:
        best = max(
            (k for k, o in enumerate(unmatched) if o[0] == box[0]),
            key=lambda k: _iou(box[1:], unmatched[k][1:]),
            default=None,
        )
        if best is None or _iou(box[1:], unmatched[best][1:]) < BOX_MATCH_IOU:
            return "boxes_differ"
        unmatched.pop(best)
    return None


def report_section(
    result: NearDuplicates | None,
    mode: Mode,
    pictures: Sequence[Picture],
    split_of: Mapping[str, str],
    final_split_of: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``prepare_report.json`` -> ``near_duplicates`` (keys documented in :data:`REPORT_KEYS`).

    ``split_of``: Picture.name -> the split it gets by its own folder group (what the set would span
    without merging); ``final_split_of``: the split it got (after ``group`` merged the folders; defaults to
    ``split_of``). ``result`` None (mode ``off``) gives the section with no sets. The cache's work
    (``decoded``, ``cached``) stays out: a rerun on the same inputs must write the same report, byte for
    byte; prepare prints it instead.
    """
    final = final_split_of if final_split_of is not None else split_of
    section: dict[str, Any] = {"mode": mode}
    if result is None:
        return section | {"sets": []}
    by_name = {p.name: p for p in pictures}
    sets = []
    for s in result.sets:
        first = by_name[s.members[0]].annotation
        reasons = sorted({why for m in s.members[1:] if (why := conflict(first, by_name[m].annotation))})
        would = sorted({split_of[m] for m in s.members})
        sets.append(
            {
                "images": [
                    {
                        "image": m,
                        "group": by_name[m].group,
                        "split_alone": split_of[m],
                        "split": final[m],
                        "source": by_name[m].annotation.source,
                        "labels": sorted({b[0] for b in by_name[m].annotation.boxes}),
                    }
                    for m in s.members
                ],
                "distance": {"min": s.distance_min, "max": s.distance_max},
                "correlation_min": s.correlation_min,
                "pairs": s.pairs,
                "splits_alone": would,
                "across_splits": len(would) > 1,
                "splits": sorted({final[m] for m in s.members}),
                "label_conflict": bool(reasons),
                "conflicts": reasons,
            }
        )
    return section | {
        "hash": f"pHash 64-bit (imagehash 4.3.2 definition) of the trainer's picture; {RECIPE}",
        "max_distance": result.max_distance,
        "min_correlation": result.min_correlation,
        "pictures": result.pictures,
        "unreadable": len(result.unreadable),
        "flat": result.flat,
        "compared": result.compared,
        "hash_pairs": result.hash_pairs,
        "verified_pairs": result.verified_pairs,
        "rejected_pairs": result.rejected_pairs,
        "set_count": len(sets),
        "images_in_sets": sum(len(s["images"]) for s in sets),
        "sets_across_splits": sum(s["across_splits"] for s in sets),
        "sets_split_now": sum(len(s["splits"]) > 1 for s in sets),
        "label_conflicts": sum(s["label_conflict"] for s in sets),
        "sets": sets,
    }


REPORT_KEYS: dict[str, str] = {
    "mode": "near_duplicates setting: group (twins' folders merged before splitting), report, off",
    "hash": "what was hashed and how (recipe string; changes invalidate the cache)",
    "max_distance": "Hamming distance (bits of 64) under which two hashes are a candidate pair",
    "min_correlation": "Pearson r of the 32x32 grey thumbnails at or above which a candidate is a twin",
    "pictures": "pictures hashed",
    "unreadable": "pictures that could not be decoded (left out of the search)",
    "flat": "pictures whose 32x32 thumbnail is one grey level: no content to compare, left unpaired",
    "compared": "Hamming distances computed by the multi-index search (sub-quadratic work)",
    "hash_pairs": "distinct pairs within max_distance",
    "verified_pairs": "of those, confirmed on the pixels (twins)",
    "rejected_pairs": "hash-near pairs whose pixels differ: alike siblings that a hash alone would pair",
    "set_count": "twin sets (verified pairs joined transitively)",
    "images_in_sets": "pictures in some set",
    "sets_across_splits": "sets whose members' own folder groups fall in more than one split (leaks "
    "without near_duplicates: group)",
    "sets_split_now": "sets still spanning several splits in the datasets written (0 with group)",
    "label_conflicts": "sets whose members are annotated differently",
    "sets": "the twin sets, sorted by their first image (keys sets[].*)",
    "sets[].images[]": "image (name as in the datasets), group, split_alone (by its own group), split "
    "(written), source (abnormal/normal), labels",
    "sets[].distance": "min and max Hamming distance over the set's verified pairs",
    "sets[].correlation_min": "the weakest verified link's Pearson r",
    "sets[].pairs": "verified pairs inside the set",
    "sets[].splits_alone": "the splits the members would span by their own groups",
    "sets[].across_splits": "splits_alone has more than one split",
    "sets[].splits": "the splits the members are in now",
    "sets[].label_conflict": "members annotated differently (conflicts says how)",
    "sets[].conflicts": "normal_vs_abnormal, labels_differ, boxes_differ (IoU < 0.5 or unmatched)",
}
