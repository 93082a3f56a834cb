"""Human-readable progress lines and the final summary table, from the coordinator's stats."""

from __future__ import annotations


def recent_rate(stats: dict, previous: dict | None) -> float:
    """Events finished per second since the previous stats (or since the start)."""
    done = stats["events_written"] + stats["events_filtered"] + stats["events_rejected"]
    if previous is None:
        return done / stats["elapsed_s"] if stats["elapsed_s"] > 0 else 0.0
    before = previous["events_written"] + previous["events_filtered"] + previous["events_rejected"]
    dt = stats["elapsed_s"] - previous["elapsed_s"]
    return (done - before) / dt if dt > 0 else 0.0


def format_progress(stats: dict, previous: dict | None = None) -> str:
    """One line: rate, kept/filtered/rejected, files, credits, queue depths."""
    finders = ",".join(str(f.get("inbox", "x")) for f in stats.get("finders", []))
    writers = ",".join(str(w.get("inbox", "x")) for w in stats.get("writers", []))
    return (
        f"{recent_rate(stats, previous):6.1f} events/s | kept {stats['events_written']} "
        f"filtered {stats['events_filtered']} rejected {stats['events_rejected']} | "
        f"files {stats['files']} | credits {stats['credits_in_use']}/{stats['credits']} | "
        f"Q2 {stats['q2_depth']} finders [{finders}] writers [{writers}]"
    )


def format_summary(stats: dict) -> str:
    """The table printed when a run ends."""
    seen = stats["events_seen"]
    kept = stats["events_written"]
    rows = [
        ("stopped because", stats.get("stop_reason") or "-"),
        ("run time", f"{stats['elapsed_s']:.1f} s"),
        ("batches taken from Q2", stats["batches_taken"]),
        ("  finished", stats["batches_done"] - stats["batches_rejected"]),
        ("  rejected", stats["batches_rejected"]),
        ("  abandoned (stop)", stats.get("batches_abandoned", 0)),
        ("  still in flight", stats["batches_in_flight"]),
        ("events seen", seen),
        ("  written (hits)", kept),
        ("    of them without image", stats.get("events_without_image", 0)),
        ("  filtered (< min_num_peak)", stats["events_filtered"]),
        ("  rejected", stats["events_rejected"]),
        ("  abandoned (stop)", stats.get("events_abandoned", 0)),
        ("  in two files (a writer lost after its rename)", stats.get("events_doubled", 0)),
        ("hit rate", f"{100.0 * kept / seen:.1f} %" if seen else "-"),
        ("peaks truncated", stats["peaks_truncated"]),
        ("files written", stats["files"]),
        ("bytes written", f"{stats['bytes_written'] / 1e9:.2f} GB"),
        ("events/s", f"{stats['events_per_s']:.1f}"),
        ("latency p50 / p99", _latency(stats)),
    ]
    if stats.get("report"):
        rows.append(("run report", stats["report"]))
    for kind, count in sorted(stats.get("rejections", {}).items()):
        rows.append((f"  rejected: {kind}", count))
    width = max(len(name) for name, _ in rows)
    lines = ["cxi_async summary", "-" * (width + 20)]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _latency(stats: dict) -> str:
    p50, p99 = stats.get("latency_p50_s"), stats.get("latency_p99_s")
    if p50 is None:
        return "-"
    return f"{p50:.2f} s / {p99:.2f} s"
