"""A/B of peak finding between two checkouts: CPU ms per event, one core, same batch.

    python bench/bench_ab_peaks.py /path/to/checkout-A /path/to/checkout-B [--rounds 3]

Each round runs A then B in fresh processes. Per checkout it times ``find_peaks`` and, when
that checkout still has ``q2.check_finite`` (the separate NaN/inf pass before issue 10's fold
into the compare), that too; ``total`` is what a finder pays per event. One ePix10k2M batch
of 8 events (16 x 352 x 384 in 512 x 512, ~100 peaks), min of 15 runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
root = sys.argv[1]
sys.path[:0] = [root + "/bench", root]
os.sched_setaffinity(0, {int(sys.argv[2])})
from bench_peaks import as_dtype, synth_batch
from cxi_async.core import peaks, q2
logits, _ = synth_batch(8, 100, 0)
shape = (8, 16, 352, 384)
out = {}
for dtype in ("float32", "float16", "bfloat16"):
    lg, bf = as_dtype(logits, dtype)
    fns = {"find": lambda: peaks.find_peaks(lg, shape, bfloat16=bf)}
    if hasattr(q2, "check_finite"):
        kind = "bfloat16" if bf else dtype
        batch = q2.DecodedBatch(
            batch_id="b", logits=lg, logits_kind=kind, original_shape=shape,
            padded_shape=lg.shape[2:], image_ref=None, meta=None,
        )
        fns["check"] = lambda: q2.check_finite(batch)
    res = {}
    for name, fn in fns.items():
        fn()
        times = []
        for _ in range(15):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        res[name] = min(times) / 8 * 1e3
    res["total"] = sum(res.values())
    out[dtype] = res
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="checkout A (e.g. a git worktree of the previous commit)")
    ap.add_argument("b", help="checkout B")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu", type=int, default=1, help="pin to this CPU")
    args = ap.parse_args(argv)
    for r in range(args.rounds):
        for label, root in (("A", args.a), ("B", args.b)):
            cmd = [sys.executable, "-c", CHILD, root, str(args.cpu)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            cells = "  ".join(
                f"{d} {v['total']:.2f}" + (f" (find {v['find']:.2f})" if "check" in v else "")
                for d, v in res.items()
            )
            print(f"round {r} {label}: ms/event total  {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
