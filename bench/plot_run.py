"""Plot a run report: throughput and queue depths over time.

    python bench/plot_run.py cxi_out/run1/peaknet_run1_report.json [-o run1.png]

Top panel: events per second between consecutive samples (processed = written + filtered +
rejected, and kept = written). Bottom panel: Q2 depth, credits in use (with the credit limit
dashed), and the summed finder and writer inbox depths. A plateau of credits in use at the
limit with inboxes full means the sink (writers) limits; credits at the limit with empty
inboxes and a deep Q2 means the finders do; credits below the limit means the producer does.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _total(values: Any) -> float:
    """Sum of an inbox list (None entries are dead actors); NaN when nothing is known."""
    known = [v for v in values or [] if v is not None]
    return float(sum(known)) if known else math.nan


def _value(v: Any) -> float:
    return math.nan if v is None else float(v)


def rates(samples: list[dict]) -> tuple[list[float], list[float], list[float]]:
    """(midpoint times, processed events/s, kept events/s) between consecutive samples."""
    t, processed, kept = [], [], []
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        if dt <= 0:
            continue
        done_a = a["events_written"] + a["events_filtered"] + a["events_rejected"]
        done_b = b["events_written"] + b["events_filtered"] + b["events_rejected"]
        t.append((a["t"] + b["t"]) / 2)
        processed.append((done_b - done_a) / dt)
        kept.append((b["events_written"] - a["events_written"]) / dt)
    return t, processed, kept


def plot(report: dict, out: Path) -> Path:
    samples = report.get("samples") or []
    if len(samples) < 2:
        raise SystemExit(f"the report has {len(samples)} samples; a plot needs at least 2.")
    label = report.get("run_label", "?")
    final = report.get("final") or {}
    credits = final.get("credits")
    if credits is None:
        credits = (report.get("config") or {}).get("processing", {}).get("credits")
    t = [s["t"] for s in samples]

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), layout="constrained")
    mid, processed, kept = rates(samples)
    top.step(mid, processed, where="mid", label="processed (kept + filtered + rejected)")
    top.step(mid, kept, where="mid", label="kept (written to CXI)")
    top.set_ylabel("events / s")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(loc="upper right", fontsize="small")

    n_finders = max((len(s.get("finder_inbox") or []) for s in samples), default=0)
    n_writers = max((len(s.get("writer_inbox") or []) for s in samples), default=0)
    bottom.plot(t, [_value(s.get("q2_depth")) for s in samples], label="Q2 depth")
    bottom.plot(t, [_value(s.get("credits_in_use")) for s in samples], label="credits in use")
    bottom.plot(
        t,
        [_total(s.get("finder_inbox")) for s in samples],
        label=f"finder inboxes (sum of {n_finders})",
    )
    bottom.plot(
        t,
        [_total(s.get("writer_inbox")) for s in samples],
        label=f"writer inboxes (sum of {n_writers})",
    )
    if credits is not None:
        bottom.axhline(credits, color="grey", linestyle="--", linewidth=1, label="credit limit")
    bottom.set_xlabel("time since start [s]")
    bottom.set_ylabel("depth [batches]")
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    bottom.legend(loc="upper right", fontsize="small")

    hit = final.get("hit_rate")
    subtitle = (
        f"kept {final.get('events_kept', '?')} of {final.get('events_seen', '?')} events"
        + (f" (hit rate {100 * hit:.1f} %)" if hit is not None else "")
        + f", {final.get('files', '?')} files"
        + (f", stopped: {final['stop_reason']}" if final.get("stop_reason") else "")
    )
    fig.suptitle(f"cxi_async run {label}\n{subtitle}", fontsize="medium")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="<prefix>_<run>_report.json")
    parser.add_argument("-o", "--output", type=Path, help="PNG to write (default: beside it)")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read the run report {args.report}: {exc}") from None
    out = args.output or args.report.with_suffix(".png")
    print(plot(report, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
