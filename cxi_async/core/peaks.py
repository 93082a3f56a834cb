"""Bragg peaks from PeakNet logits: mask, connected components, centroids.

The mask of a panel is ``logit[1] > logit[0]`` over its *real* pixels only (padded pixels
never enter it, so they can neither produce a peak nor pull a centroid). Peaks are the
8-connected (or 4-connected) components of that mask within one panel; a peak's position is
the unweighted mean of its pixel coordinates, as the upstream chain defines it.

Why it is fast (see ``bench/bench_peaks.py``): the mask is sparse (a few thousand of ~2 M
pixels per event), so only the pass that builds it touches every pixel. It runs over whole
contiguous rows of a few panels at a time into a small reused buffer that stays in cache;
everything after it (labelling, centroids, intensities) works on the list of foreground
pixels. A zero guard row under every panel and a zero guard column (the padding columns,
cleared) let neighbours be found by adding fixed offsets to linear indices without ever
wrapping to the next row or panel.

16-bit logits (float16, or bfloat16 bits as int16) are compared as integers, never widened:
IEEE bits are sign-magnitude, so a two's-complement compare of the raw bits gives the float
order except where both values are negative, where it is reversed; the compare is flipped
where ``a & b < 0``. That pass can only err on ties, -0 vs +0 and NaN (a superset of the
mask), so the few candidate pixels are re-checked exactly as float32. Same values in float32,
float16 or bfloat16 give the same mask. The bench measures the alternatives (an
order-preserving key ``x ^ ((x >> 15) & 0x7FFF)``, widening to float32): this is the fastest,
though not faster than float32 itself, whose single compare is memory-bound while numpy
spends on the extra integer passes what reading half the bytes saves.

A dense mask (a broken model marking most pixels) stays correct but costs time in
proportion to its foreground pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage
from scipy.sparse import csr_array
from scipy.sparse.csgraph import connected_components

__all__ = [
    "PeakFindingError",
    "PeakTable",
    "Selection",
    "find_peaks",
    "peak_mask",
    "select_events",
]

# Bytes of mask buffer per chunk of panels: a few panels, small enough to stay in L2.
_CHUNK_BYTES = 1 << 19
# Above this fraction of foreground pixels, label the rebuilt dense mask with ndimage instead
# of the pixel graph (measured crossover, bench/bench_peaks.py --density).
_DENSE_FRACTION = 0.04
# How 16-bit logits are compared: "xorsign", "key" or "convert" (see bench/bench_peaks.py).
_METHOD = {"float": "", "float16": "xorsign", "bfloat16": "xorsign"}
# IEEE kinds: (integer type of the bits, magnitude mask, exponent mask). A value is NaN or
# infinite exactly when its magnitude bits (sign cleared) reach the exponent mask.
_IEEE: dict[str, tuple[type, int, int]] = {
    "float16": (np.int16, 0x7FFF, 0x7C00),
    "bfloat16": (np.int16, 0x7FFF, 0x7F80),
    "float32": (np.int32, 0x7FFF_FFFF, 0x7F80_0000),
    "float64": (np.int64, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
}


class PeakFindingError(ValueError):
    """Logits, image or selection settings that peak finding cannot accept."""


@dataclass(frozen=True, eq=False)
class PeakTable:
    """Every peak of a batch as flat arrays, ordered by (event, panel, first raster pixel).

    Positions are panel pixel indices (centre of pixel (0, 0) is (0.0, 0.0)).
    ``total_intensity`` and ``max_value`` are 0 and the weighted centre equals the
    unweighted one when no image was given (or the summed intensity is <= 0).
    """

    event: np.ndarray  # int32
    panel: np.ndarray  # int32
    row: np.ndarray  # float64
    col: np.ndarray  # float64
    npix: np.ndarray  # int32
    total_intensity: np.ndarray  # float32
    max_value: np.ndarray  # float32
    weighted_row: np.ndarray  # float64
    weighted_col: np.ndarray  # float64
    counts: np.ndarray  # (B,) int64, peaks per event

    @classmethod
    def empty(cls, num_events: int) -> PeakTable:
        """A table with no peaks for ``num_events`` events."""
        f64 = np.empty(0, np.float64)
        f32 = np.empty(0, np.float32)
        i32 = np.empty(0, np.int32)
        return cls(i32, i32, f64, f64, i32, f32, f32, f64, f64, np.zeros(num_events, np.int64))

    def __len__(self) -> int:
        return int(self.event.shape[0])

    @property
    def num_events(self) -> int:
        return int(self.counts.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """(B+1,) int64: peaks of event b are rows ``offsets[b]:offsets[b+1]``."""
        out = np.zeros(self.counts.shape[0] + 1, np.int64)
        np.cumsum(self.counts, out=out[1:])
        return out

    def event_slice(self, b: int) -> slice:
        """Rows of the table that belong to event ``b``."""
        if not 0 <= b < self.num_events:
            raise IndexError(f"event {b} is out of range for a table of {self.num_events} events")
        start = int(self.counts[:b].sum())
        return slice(start, start + int(self.counts[b]))

    def for_event(self, b: int) -> PeakTable:
        """The peaks of event ``b`` as a one-event table of views (``event`` keeps ``b``)."""
        s = self.event_slice(b)
        cols = {f.name: getattr(self, f.name)[s] for f in fields(self) if f.name != "counts"}
        return PeakTable(**cols, counts=self.counts[b : b + 1])


@dataclass(frozen=True, eq=False)
class Selection:
    """Which events of a batch to write, and which of their peaks.

    ``peak_index[peak_offsets[i]:peak_offsets[i+1]]`` are the table rows (in table order) to
    write for event ``kept[i]``; ``num_truncated[i]`` peaks of it were dropped because it had
    more than ``max_num_peak`` (the ones with fewest pixels; ties drop the later ones).
    """

    kept: np.ndarray  # int64 event indices with >= min_num_peak peaks, ascending
    filtered: np.ndarray  # int64 event indices with fewer, ascending
    peak_index: np.ndarray  # int64 rows of the table to write
    peak_offsets: np.ndarray  # (len(kept)+1,) int64
    num_truncated: np.ndarray  # (len(kept),) int64

    @property
    def total_truncated(self) -> int:
        return int(self.num_truncated.sum())

    def peaks_of(self, i: int) -> np.ndarray:
        """Table rows to write for the i-th kept event (``kept[i]``)."""
        return self.peak_index[self.peak_offsets[i] : self.peak_offsets[i + 1]]


# --------------------------------------------------------------------------- validation


def _check_inputs(
    logits: np.ndarray,
    original_shape: tuple[int, int, int, int],
    bfloat16: bool,
    image: np.ndarray | None,
    connectivity: int,
) -> tuple[str, int, int, int, int]:
    """Validate shapes and dtypes; return (kind, B, C, H_orig, W_orig)."""
    if len(original_shape) != 4:
        raise PeakFindingError(
            f"original_shape {tuple(original_shape)} must be (B, C, H_orig, W_orig)"
        )
    b, c, ho, wo = (int(v) for v in original_shape)
    if min(b, c, ho, wo) < 1:
        raise PeakFindingError(f"original_shape {(b, c, ho, wo)} must be all positive")
    if logits.ndim != 4 or logits.shape[1] != 2:
        raise PeakFindingError(
            f"logits of shape {logits.shape} must be (B*C, 2, H, W) with 2 classes"
        )
    n, _, h, w = logits.shape
    if n != b * c or h < ho or w < wo:
        raise PeakFindingError(
            f"logits of shape {logits.shape} do not hold original_shape {(b, c, ho, wo)}: "
            f"need {b * c} panels of at least {ho} x {wo} pixels"
        )
    if logits.strides[-1] != logits.itemsize:
        raise PeakFindingError("logits must be contiguous along their last (column) axis")
    dt = logits.dtype
    if bfloat16:
        if dt not in (np.int16, np.uint16):
            raise PeakFindingError(f"bfloat16 logits must arrive as int16 raw bits, got dtype {dt}")
        kind = "bfloat16"
    elif dt == np.float16:
        kind = "float16"
    elif dt in (np.float32, np.float64):
        kind = "float"
    else:
        raise PeakFindingError(
            f"logits dtype {dt} is not supported: use float32, float16, "
            "or int16 bfloat16 bits with bfloat16=True"
        )
    if image is not None:
        ok = (
            image.ndim in (3, 4)
            and image.shape[0] == n
            and (image.ndim == 3 or image.shape[1] == 1)
        )
        if not ok or image.shape[-2] < ho or image.shape[-1] < wo:
            raise PeakFindingError(
                f"image of shape {image.shape} does not match the logits: "
                f"need ({n}, 1, >={ho}, >={wo})"
            )
    if connectivity not in (4, 8):
        raise PeakFindingError(f"connectivity must be 4 or 8, got {connectivity}")
    return kind, b, c, ho, wo


# --------------------------------------------------------------------------- the mask


class _MaskScanner:
    """Builds the mask a few panels at a time and lists its foreground pixels.

    Pixel (n, r, c) has the linear index ``n * P + r * Wb + c`` with ``P = (H_orig+1) * Wb``:
    row ``H_orig`` of every panel and columns ``>= W_orig`` are always background, so
    ``index + offset`` for a forward neighbour never lands in another row or panel.
    """

    def __init__(self, logits: np.ndarray, kind: str, ho: int, wo: int, method: str = "") -> None:
        n, _, _, w = logits.shape
        self.logits, self.kind, self.ho, self.wo = logits, kind, ho, wo
        self.method = method or _METHOD[kind]
        # Whole padded rows are one contiguous block per panel: numpy runs a single long
        # inner loop (~3x faster than 384-wide cropped rows). Worth it unless the padding
        # is wider than the panel; without column padding we add our own guard column.
        self.full_rows = wo < w <= 2 * wo
        self.wb = w if self.full_rows else wo + 1
        self.wsrc = w if self.full_rows else wo
        self.panel_size = (ho + 1) * self.wb
        self.chunk = max(1, min(n, _CHUNK_BYTES // self.panel_size))
        self.buf = np.zeros((self.chunk, ho + 1, self.wb), np.bool_)
        self.nonfinite = 0  # NaN or infinite logits among the real pixels seen so far
        self.ieee = _IEEE[logits.dtype.name if kind == "float" else kind]
        if kind != "float":
            self.tmp_abs = np.empty(self.chunk * 2 * ho * w, np.int16)
            self.tmp16 = np.empty((self.chunk, ho, self.wsrc), np.int16)
            self.tmpb = np.empty((self.chunk, ho, self.wsrc), np.bool_)
            if self.method == "key":
                self.tmp16 = np.empty((self.chunk, 2, ho, self.wsrc), np.int16)
            if self.method == "convert":
                self.tmp32 = np.empty((self.chunk, 2, ho, self.wsrc), np.float32)

    def compare(self, k0: int, k1: int) -> None:
        """Write the mask of panels k0..k1-1 into ``buf[:k1-k0]`` (a superset for 16 bits)."""
        k, ho = k1 - k0, self.ho
        src = self.logits[k0:k1, :, :ho, : self.wsrc]
        out = self.buf[:k, :ho, : self.wsrc]
        if self.kind == "float":
            np.greater(src[:, 1], src[:, 0], out=out)
        elif self.method == "xorsign":
            # Sign-magnitude order equals two's-complement order except when both are
            # negative, where it is reversed: flip the integer compare there.
            src = src.view(np.int16)
            a, b, t, neg = src[:, 1], src[:, 0], self.tmp16[:k], self.tmpb[:k]
            np.bitwise_and(a, b, out=t)
            np.less(t, 0, out=neg)
            np.greater(a, b, out=out)
            np.not_equal(out, neg, out=out)
        elif self.method == "convert":
            # Widen to float32 first (bfloat16: bits << 16; float16: astype).
            f32 = self.tmp32[:k]
            if self.kind == "bfloat16":
                np.left_shift(src.view(np.int16), 16, out=f32.view(np.int32), dtype=np.int32)
            else:
                np.copyto(f32, src)
            np.greater(f32[:, 1], f32[:, 0], out=out)
        else:  # "key": order-preserving integer key x ^ ((x >> 15) & 0x7FFF)
            src = src.view(np.int16)
            key = self.tmp16[:k]
            np.right_shift(src, 15, out=key)
            np.bitwise_and(key, 0x7FFF, out=key)
            np.bitwise_xor(key, src, out=key)
            np.greater(key[:, 1], key[:, 0], out=out)
        if self.full_rows:
            self.buf[:k, :ho, self.wo :] = False

    def foreground(self) -> np.ndarray:
        """Sorted linear indices of every foreground pixel of the batch (exact mask)."""
        npanel = self.logits.shape[0]
        parts = []
        for k0 in range(0, npanel, self.chunk):
            k1 = min(k0 + self.chunk, npanel)
            self.compare(k0, k1)
            self._count_nonfinite(k0, k1)  # the chunk is still in cache: no second full pass
            q = self._list(k1 - k0)
            if q.size:
                parts.append(q + k0 * self.panel_size if k0 else q)
        if not parts:
            return np.empty(0, np.int64)
        lin = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self.kind != "float":
            lin = lin[self._exact(lin)]
        return lin

    def _count_nonfinite(self, k0: int, k1: int) -> None:
        """Count NaN and infinite logits of panels k0..k1-1, real pixels only.

        A quick test over the whole rows (contiguous, still in cache from the compare):
        float max and min are finite only if every value is (NaN propagates); 16-bit kinds
        take the max of their magnitude bits. Only when it fails are the real pixels counted.
        """
        rows = self.logits[k0:k1, :, : self.ho]
        bits_type, magnitude_mask, exponent = self.ieee
        if self.kind == "float":
            if np.isfinite(rows.max()) and np.isfinite(rows.min()):
                return
            magnitude = np.bitwise_and(rows.view(bits_type), bits_type(magnitude_mask))
        else:
            magnitude = self.tmp_abs[: rows.size].reshape(rows.shape)
            np.bitwise_and(rows.view(bits_type), bits_type(magnitude_mask), out=magnitude)
            if int(magnitude.max()) < exponent:
                return
        self.nonfinite += int(np.count_nonzero(magnitude[..., : self.wo] >= exponent))

    def _list(self, k: int) -> np.ndarray:
        """Linear indices of the foreground in ``buf[:k]``: first the rows that have any
        (``any`` stops at the first hit), then ``flatnonzero`` on those rows only; ~2x
        faster than ``flatnonzero`` over the whole sparse buffer."""
        rows = self.buf[:k].reshape(-1, self.wb)
        hit_rows = np.flatnonzero(rows.any(axis=1))
        if hit_rows.size == 0:
            return hit_rows
        i, j = np.divmod(np.flatnonzero(rows[hit_rows]), self.wb)
        return hit_rows[i] * self.wb + j

    def coords(self, lin: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(panel, row, col) of linear indices."""
        panel, rem = np.divmod(lin, self.panel_size)
        row, col = np.divmod(rem, self.wb)
        return panel, row, col

    def _exact(self, lin: np.ndarray) -> np.ndarray:
        """Exact ``l1 > l0`` at the candidates (the integer pass also lets through ties,
        -0 vs +0 and NaN), comparing the few values as float32."""
        n, r, c = self.coords(lin)
        bits = self.logits[n, :, r, c]  # (M, 2)
        if self.kind == "bfloat16":
            vals = (bits.astype(np.int32) << 16).view(np.float32)
        else:
            vals = bits.view(np.float16).astype(np.float32)
        return vals[:, 1] > vals[:, 0]


def peak_mask(
    logits: np.ndarray, original_shape: tuple[int, int, int, int], *, bfloat16: bool = False
) -> np.ndarray:
    """The mask of real pixels, ``logit[1] > logit[0]``: bool (B*C, H_orig, W_orig).

    Ties and NaN are background. Computed with the same kernel as :func:`find_peaks`.
    """
    kind, _, _, ho, wo = _check_inputs(logits, original_shape, bfloat16, None, 8)
    scan = _MaskScanner(logits, kind, ho, wo)
    out = np.zeros((logits.shape[0], ho, wo), np.bool_)
    out[scan.coords(scan.foreground())] = True
    return out


# --------------------------------------------------------------------------- components


def _edges(lin: np.ndarray, wb: int, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges (i, j), i < j, between 4- or 8-neighbouring foreground pixels ``lin[i]``, ``lin[j]``.

    ``lin`` is sorted, so the right neighbour is the next entry and the ones below are found
    by binary search; the guard row and column keep every offset inside its row and panel.
    """
    src = [np.flatnonzero(np.diff(lin) == 1)]
    dst = [src[0] + 1]
    last = lin.size - 1
    for d in (wb,) if connectivity == 4 else (wb - 1, wb, wb + 1):
        target = lin + d
        pos = np.minimum(np.searchsorted(lin, target), last)
        hit = np.flatnonzero(lin[pos] == target)
        src.append(hit)
        dst.append(pos[hit])
    return np.concatenate(src), np.concatenate(dst)


def _label(num: int, src: np.ndarray, dst: np.ndarray) -> tuple[int, np.ndarray]:
    """Component labels of the graph of foreground pixels, numbered by first pixel."""
    if src.size == 0:
        return num, np.arange(num, dtype=np.int64)
    order = np.argsort(src, kind="stable")
    indptr = np.zeros(num + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=num), out=indptr[1:])
    graph = csr_array((np.ones(src.size, np.int8), dst[order], indptr), shape=(num, num))
    ncomp, labels = connected_components(graph, directed=False)
    return ncomp, _in_first_pixel_order(labels.astype(np.int64, copy=False), ncomp)


def _label_dense(lin: np.ndarray, scan: _MaskScanner, connectivity: int) -> tuple[int, np.ndarray]:
    """The same labels via ``ndimage.label`` on the mask rebuilt chunk by chunk: cheaper when
    a large part of the pixels is foreground (cost per pixel instead of per foreground pixel).
    """
    structure = np.zeros((3, 3, 3), bool)  # in-plane only: panels never connect
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    npanel, size, chunk = scan.logits.shape[0], scan.panel_size, scan.chunk
    bounds = np.searchsorted(lin, np.arange(0, npanel + chunk, chunk) * size)
    flat = scan.buf.reshape(-1)
    labels = np.empty(lin.size, np.int64)
    total = 0
    for i, k0 in enumerate(range(0, npanel, chunk)):
        b0, b1 = bounds[i], bounds[i + 1]
        if b0 == b1:
            continue
        q = lin[b0:b1] - k0 * size
        scan.buf[:] = False
        flat[q] = True
        lab, n = ndimage.label(scan.buf[: min(chunk, npanel - k0)], structure)
        labels[b0:b1] = lab.reshape(-1)[q] + (total - 1)
        total += n
    return total, _in_first_pixel_order(labels, total)


def _in_first_pixel_order(labels: np.ndarray, ncomp: int) -> np.ndarray:
    """Labels renumbered so that they appear in order along ``labels`` (table order).

    csgraph and ndimage already number components as they meet them in index order; check
    that cheaply (the running maximum rises by 0 or 1) and renumber only if it ever differs.
    """
    runmax = np.maximum.accumulate(labels)
    if labels[0] == 0 and not np.any(np.diff(runmax) > 1):
        return labels
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(ncomp, np.int64)
    rank[np.argsort(first)] = np.arange(ncomp)
    return rank[labels]


# --------------------------------------------------------------------------- find_peaks


def find_peaks(
    logits: np.ndarray,
    original_shape: tuple[int, int, int, int],
    *,
    bfloat16: bool = False,
    image: np.ndarray | None = None,
    connectivity: int = 8,
    reject_nonfinite: bool = True,
) -> PeakTable:
    """Find the peaks of every panel of a batch of PeakNet logits.

    ``logits`` is (B*C, 2, H, W), padded bottom-right, float32 / float16, or int16 raw
    bfloat16 bits with ``bfloat16=True``; it is only read. ``image`` (B*C, 1, H, W), when
    given, supplies intensities at the peak pixels. A NaN or infinite logit among the real
    pixels raises PeakFindingError, counted in the same pass that builds the mask
    (``reject_nonfinite=False``: they are background, as in :func:`peak_mask`).
    """
    kind, nb, nc, ho, wo = _check_inputs(logits, original_shape, bfloat16, image, connectivity)
    scan = _MaskScanner(logits, kind, ho, wo)
    lin = scan.foreground()
    if scan.nonfinite and reject_nonfinite:  # a broken model or transfer: loud
        name = logits.dtype.name if kind == "float" else kind
        raise PeakFindingError(
            f"{scan.nonfinite} of {logits.shape[0] * 2 * ho * wo} logits are NaN or infinite "
            f"({name})"
        )
    if lin.size == 0:
        return PeakTable.empty(nb)
    if lin.size > _DENSE_FRACTION * logits.shape[0] * ho * wo:
        ncomp, labels = _label_dense(lin, scan, connectivity)
    else:
        ncomp, labels = _label(lin.size, *_edges(lin, scan.wb, connectivity))
    return _measure(lin, labels, ncomp, scan, nb, nc, image)


def _measure(
    lin: np.ndarray,
    labels: np.ndarray,
    ncomp: int,
    scan: _MaskScanner,
    nb: int,
    nc: int,
    image: np.ndarray | None,
) -> PeakTable:
    """Per-component pixel count, centroids and intensities from the foreground list."""
    panel, r, c = scan.coords(lin)
    npix = np.bincount(labels, minlength=ncomp)
    row = np.bincount(labels, r, ncomp) / npix
    col = np.bincount(labels, c, ncomp) / npix
    first = np.zeros(ncomp, np.int64)
    first[1:] = np.flatnonzero(np.diff(np.maximum.accumulate(labels))) + 1
    pk_panel = panel[first]
    if image is None:
        zero = np.zeros(ncomp, np.float32)
        tot32, vmax, wrow, wcol = zero, zero, row, col
    else:
        img = image if image.ndim == 3 else image[:, 0]
        v = img[panel, r, c].astype(np.float64)
        tot = np.bincount(labels, v, ncomp)
        vmax = np.full(ncomp, -np.inf)
        np.maximum.at(vmax, labels, v)
        positive = tot > 0
        safe = np.where(positive, tot, 1.0)
        wrow = np.where(positive, np.bincount(labels, v * r, ncomp) / safe, row)
        wcol = np.where(positive, np.bincount(labels, v * c, ncomp) / safe, col)
        tot32, vmax = tot.astype(np.float32), vmax.astype(np.float32)
    event = (pk_panel // nc).astype(np.int32)
    return PeakTable(
        event=event,
        panel=(pk_panel % nc).astype(np.int32),
        row=row,
        col=col,
        npix=npix.astype(np.int32),
        total_intensity=tot32,
        max_value=vmax,
        weighted_row=wrow,
        weighted_col=wcol,
        counts=np.bincount(event, minlength=nb).astype(np.int64),
    )


# --------------------------------------------------------------------------- selection


def select_events(table: PeakTable, min_num_peak: int, max_num_peak: int) -> Selection:
    """Keep events with at least ``min_num_peak`` peaks; write at most ``max_num_peak`` each.

    Truncation keeps the peaks with the most pixels (ties: earlier in table order), then
    restores table order. Vectorised over the batch.
    """
    if min_num_peak < 0 or max_num_peak < 1 or min_num_peak > max_num_peak:
        raise PeakFindingError(
            f"min_num_peak={min_num_peak} and max_num_peak={max_num_peak} are not allowed: "
            "need 0 <= min_num_peak <= max_num_peak and max_num_peak >= 1"
        )
    counts = table.counts
    keep = counts >= min_num_peak
    kept = np.flatnonzero(keep).astype(np.int64)
    filtered = np.flatnonzero(~keep).astype(np.int64)
    rows = np.flatnonzero(keep[table.event]) if len(table) else np.empty(0, np.int64)
    written = np.minimum(counts[kept], max_num_peak)
    truncated = counts[kept] - written
    if truncated.any():
        ev = table.event[rows]
        # Within each event: most pixels first, then table order (lexsort is stable).
        order = rows[np.lexsort((rows, -table.npix[rows].astype(np.int64), ev))]
        starts = np.zeros(table.num_events + 1, np.int64)
        np.cumsum(np.where(keep, counts, 0), out=starts[1:])
        rank = np.arange(order.size) - starts[table.event[order]]
        rows = np.sort(order[rank < max_num_peak])
    offsets = np.zeros(kept.size + 1, np.int64)
    np.cumsum(written, out=offsets[1:])
    return Selection(
        kept=kept,
        filtered=filtered,
        peak_index=rows.astype(np.int64),
        peak_offsets=offsets,
        num_truncated=truncated.astype(np.int64),
    )
