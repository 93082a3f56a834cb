"""Peak finding speed: ``peaks.find_peaks`` vs ``reference.reference_find_peaks``, one core.

Synthesises ePix10k2M-shaped batches (16 panels of 352 x 384 real pixels in 512 x 512
padded logits, ~100 peaks of 1 to ~30 pixels per event, background class dominant) and
prints ms per event (min / median) per dtype, the ratio to the reference measured in the
same run, and where the time of ``find_peaks`` goes. Times are CPU time of the bench thread,
so other processes on a shared machine do not inflate them (their use of memory bandwidth
still does); on an idle machine they equal wall time.

    python bench/bench_peaks.py [--events N] [--dtype float32|float16|bfloat16|all] [--json]
    python bench/bench_peaks.py --density   # graph vs dense labelling: the switch-over point
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import reference_find_peaks
from cxi_async.core import peaks

PANELS, H_ORIG, W_ORIG, H_PAD, W_PAD = 16, 352, 384, 512, 512
METHODS = ("key", "xorsign", "convert")  # ways to compare 16-bit logits (peaks._MaskScanner)


def synth_batch(num_events: int, peaks_per_event: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits (B*C, 2, H, W) and image (B*C, 1, H, W), read-only like Ray's."""
    rng = np.random.default_rng(seed)
    n = num_events * PANELS
    logits = np.empty((n, 2, H_PAD, W_PAD), np.float32)
    rng.standard_normal((n, 2, H_PAD, W_PAD), dtype=np.float32, out=logits)
    logits[:, 0] += 4.0  # background dominant: l0 ~ N(4, 1), l1 ~ N(-4, 1)
    logits[:, 1] -= 4.0
    image = rng.exponential(1.0, (n, 1, H_PAD, W_PAD)).astype(np.float32)
    # Blobs: discs of radius 0.5..3 (1 to ~29 pixels), anywhere in the real pixels.
    yy, xx = np.mgrid[-3:4, -3:4]
    for _ in range(num_events * peaks_per_event):
        p = rng.integers(n)
        r0, c0 = rng.integers(0, H_ORIG), rng.integers(0, W_ORIG)
        disc = yy**2 + xx**2 <= rng.uniform(0.5, 3.0) ** 2
        rr, cc = yy[disc] + r0, xx[disc] + c0
        ok = (rr >= 0) & (rr < H_ORIG) & (cc >= 0) & (cc < W_ORIG)
        rr, cc = rr[ok], cc[ok]
        logits[p, 1, rr, cc] = logits[p, 0, rr, cc] + rng.uniform(0.1, 5.0, rr.size)
        image[p, 0, rr, cc] += rng.uniform(10, 1000, rr.size).astype(np.float32)
    logits.flags.writeable = False
    image.flags.writeable = False
    return logits, image


def as_dtype(logits: np.ndarray, dtype: str) -> tuple[np.ndarray, bool]:
    """The same logits in another dtype: float16, or bfloat16 bits (truncated) as int16."""
    if dtype == "float32":
        out, bf = logits, False
    elif dtype == "float16":
        out, bf = logits.astype(np.float16), False
    else:
        out, bf = (logits.view(np.int32) >> 16).astype(np.int16), True
    out.flags.writeable = False
    return out, bf


def timeit(fn: Callable[[], object], repeat: int) -> list[float]:
    """CPU seconds of the calling thread per run: other processes on the machine do not
    count, the memory bandwidth they take still does."""
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return times


def breakdown(
    logits: np.ndarray, bf: bool, image: np.ndarray, repeat: int, method: str = ""
) -> dict[str, float]:
    """Min CPU seconds per batch of each stage of find_peaks, run stage by stage."""
    shape = (logits.shape[0] // PANELS, PANELS, H_ORIG, W_ORIG)
    kind = peaks._check_inputs(logits, shape, bf, image, 8)[0]
    scan = peaks._MaskScanner(logits, kind, H_ORIG, W_ORIG, method)
    npanel = logits.shape[0]

    def compare_only() -> None:
        for k0 in range(0, npanel, scan.chunk):
            scan.compare(k0, min(k0 + scan.chunk, npanel))

    lin = scan.foreground()
    src, dst = peaks._edges(lin, scan.wb, 8)
    ncomp, labels = peaks._label(lin.size, src, dst)
    nb = shape[0]
    return {
        "compare": min(timeit(compare_only, repeat)),
        "mask": min(timeit(scan.foreground, repeat)),
        "edges": min(timeit(lambda: peaks._edges(lin, scan.wb, 8), repeat)),
        "label": min(timeit(lambda: peaks._label(lin.size, src, dst), repeat)),
        "centroids": min(
            timeit(lambda: peaks._measure(lin, labels, ncomp, scan, nb, PANELS, None), repeat)
        ),
        "centroids_image": min(
            timeit(lambda: peaks._measure(lin, labels, ncomp, scan, nb, PANELS, image), repeat)
        ),
        "foreground_pixels": float(lin.size),
    }


def compare_methods(logits: np.ndarray, bf: bool, repeat: int) -> dict[str, float]:
    """Min CPU seconds per batch of the mask pass (compare + list) for each 16-bit method."""
    shape = (logits.shape[0] // PANELS, PANELS, H_ORIG, W_ORIG)
    kind = peaks._check_inputs(logits, shape, bf, None, 8)[0]
    scans = {m: peaks._MaskScanner(logits, kind, H_ORIG, W_ORIG, m) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(repeat):  # interleaved, so drift on a busy machine hits all alike
        for m, scan in scans.items():
            times[m] += timeit(scan.foreground, 1)
    return {m: min(t) for m, t in times.items()}


def density_sweep(num_events: int, repeat: int) -> dict[str, dict[str, float]]:
    """ms per event of find_peaks with the pixel-graph and the dense labelling, by density.

    Logits are i.i.d. with class 1 shifted so that a given fraction of pixels is foreground:
    the crossover sets ``peaks._DENSE_FRACTION``.
    """
    from scipy.special import ndtri

    rng = np.random.default_rng(2)
    n = num_events * PANELS
    logits = rng.standard_normal((n, 2, H_PAD, W_PAD), dtype=np.float32)
    base = logits[:, 1].copy()
    shape = (num_events, PANELS, H_ORIG, W_ORIG)
    saved = peaks._DENSE_FRACTION
    out = {}
    try:
        for density in (0.0005, 0.002, 0.005, 0.01, 0.02, 0.05, 0.2):
            # l1 - l0 ~ N(shift, 2): P(l1 > l0) = density
            logits[:, 1] = base + np.float32(np.sqrt(2) * ndtri(density))
            row = {}
            for path, frac in (("graph", np.inf), ("dense", 0.0)):
                peaks._DENSE_FRACTION = frac
                t = timeit(lambda: peaks.find_peaks(logits, shape), repeat)
                row[path] = min(t) * 1e3 / num_events
            out[f"{density:g}"] = row
    finally:
        peaks._DENSE_FRACTION = saved
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=8, help="events per batch (default 8)")
    ap.add_argument("--peaks", type=int, default=100, help="blobs per event (default 100)")
    ap.add_argument("--dtype", default="all", choices=["float32", "float16", "bfloat16", "all"])
    ap.add_argument("--repeat", type=int, default=7, help="timed runs of find_peaks")
    ap.add_argument("--ref-repeat", type=int, default=2, help="timed runs of the reference")
    ap.add_argument("--cpu", type=int, default=0, help="pin to this CPU (-1: do not pin)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument(
        "--density",
        action="store_true",
        help="instead: time graph vs dense labelling over mask densities (sets the crossover)",
    )
    args = ap.parse_args(argv)
    # numpy ufuncs and csgraph are single-threaded anyway; pinning keeps the process on one
    # core. Times are CPU time of this thread (see timeit).
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})

    if args.density:
        sweep = density_sweep(args.events, args.repeat)
        if args.json:
            print(json.dumps({"events": args.events, "density_ms_per_event": sweep}, indent=2))
        else:
            print(
                f"find_peaks ms per event by foreground fraction (default switch at "
                f"{peaks._DENSE_FRACTION:g}):"
            )
            for d, row in sweep.items():
                print(f"  {d:>7}: graph {row['graph']:8.2f}   dense {row['dense']:8.2f}")
        return 0

    base, image = synth_batch(args.events, args.peaks, seed=1)
    shape = (args.events, PANELS, H_ORIG, W_ORIG)
    dtypes = ["float32", "float16", "bfloat16"] if args.dtype == "all" else [args.dtype]
    results = {}
    for dtype in dtypes:
        logits, bf = as_dtype(base, dtype)
        ours = peaks.find_peaks(logits, shape, bfloat16=bf, image=image)
        ref = reference_find_peaks(logits, shape, bfloat16=bf, image=image)
        same = len(ours) == len(ref) and all(
            np.array_equal(getattr(ours, k), getattr(ref, k))
            for k in ("event", "panel", "row", "col", "npix", "max_value")
        )
        t_ours = timeit(lambda x=logits, b=bf: peaks.find_peaks(x, shape, bfloat16=b), args.repeat)
        t_img = timeit(
            lambda x=logits, b=bf: peaks.find_peaks(x, shape, bfloat16=b, image=image),
            args.repeat,
        )
        t_ref = timeit(
            lambda x=logits, b=bf: reference_find_peaks(x, shape, bfloat16=b), args.ref_repeat
        )
        parts = breakdown(logits, bf, image, args.repeat)
        per = 1e3 / args.events
        methods = compare_methods(logits, bf, args.repeat) if dtype != "float32" else {}
        results[dtype] = {
            "find_peaks_ms_min": min(t_ours) * per,
            "find_peaks_ms_median": statistics.median(t_ours) * per,
            "find_peaks_image_ms_min": min(t_img) * per,
            "find_peaks_image_ms_median": statistics.median(t_img) * per,
            "reference_ms_min": min(t_ref) * per,
            "reference_ms_median": statistics.median(t_ref) * per,
            "speedup_min": min(t_ref) / min(t_ours),
            "peaks_per_event": len(ours) / args.events,
            "same_as_reference": bool(same),
            "mask_ms_by_method": {m: v * per for m, v in methods.items()},
            "breakdown_ms": {
                k: (v * per if k != "foreground_pixels" else v / args.events)
                for k, v in parts.items()
            },
        }
        del logits
    if args.json:
        print(json.dumps({"events": args.events, "cpu": args.cpu, "results": results}, indent=2))
        return 0
    print(
        f"ePix10k2M batch: {args.events} events x {PANELS} panels x {H_ORIG}x{W_ORIG} "
        f"in {H_PAD}x{W_PAD}; ms of CPU (thread time) per event, pinned to one core"
    )
    print(
        f"{'dtype':9} {'find_peaks min/med':>19} {'+image min/med':>16} "
        f"{'reference min/med':>19} {'ratio':>6} {'peaks/ev':>8} same"
    )
    for dtype, r in results.items():
        print(
            f"{dtype:9} {r['find_peaks_ms_min']:8.2f} / {r['find_peaks_ms_median']:6.2f}  "
            f"{r['find_peaks_image_ms_min']:6.2f} / {r['find_peaks_image_ms_median']:6.2f}  "
            f"{r['reference_ms_min']:8.1f} / {r['reference_ms_median']:6.1f}  "
            f"{r['speedup_min']:5.0f}x {r['peaks_per_event']:8.1f} {r['same_as_reference']}"
        )
    print("\nbreakdown of find_peaks, ms per event (min):")
    for dtype, r in results.items():
        b = r["breakdown_ms"]
        print(
            f"{dtype:9} compare {b['compare']:.2f} | mask (compare+list) {b['mask']:.2f} | "
            f"edges {b['edges']:.2f} | label {b['label']:.2f} | centroids "
            f"{b['centroids']:.2f} (with image {b['centroids_image']:.2f}) | "
            f"{b['foreground_pixels']:.0f} foreground px/event"
        )
    print("\nmask pass (compare + list) by 16-bit method, ms per event (min):")
    for dtype, r in results.items():
        if r["mask_ms_by_method"]:
            cells = " | ".join(f"{m} {v:.2f}" for m, v in r["mask_ms_by_method"].items())
            print(f"{dtype:9} {cells}  (default: {peaks._METHOD[_KIND[dtype]]})")
    return 0


_KIND = {"float32": "float", "float16": "float16", "bfloat16": "bfloat16"}


if __name__ == "__main__":
    raise SystemExit(main())
