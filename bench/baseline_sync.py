"""Baseline for bench_pipeline.py: the earlier writer's shape, one synchronous loop in the driver.

    python bench/baseline_sync.py [--batches 4] [--dtype float32|float16|bfloat16]
        [--source q2|list] [--zero-copy/--no-zero-copy] [--fsync/--no-fsync] [--json]

For each batch, in order and one at a time:
  1. take it: ``ray.get(shard.get.remote())`` from a Q2 shard the replay producer filled, as
     the earlier writer did (``--source q2``), or from a plain list (``--source list``);
  2. per panel: argmax over the classes, ``scipy.ndimage.label``, a loop over the labels for
     centroids and intensities (``reference.reference_find_peaks``);
  3. keep events with >= min_num_peak peaks, map them onto the slab;
  4. every ``events_per_file`` kept events: a CXI file written per event and per scalar
     (``reference.reference_write_cxi``), fsync'ed when asked (so it compares with the
     pipeline's durable files).
The Q2 shard is filled completely before the clock starts; the clock runs from the first
get to the last file written. No actors besides the shard and the producer that fills it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reference import reference_find_peaks, reference_write_cxi
from cxi_async.config import Config, load_config
from cxi_async.core import q2
from cxi_async.core.cxi import CxiEvents
from cxi_async.core.finding import Layouts, load_slab_layout
from cxi_async.core.geometry import SlabLayout
from cxi_async.core.messages import EventPeaks
from cxi_async.replay.producer import replay_batch
from cxi_async.replay.synthetic import SyntheticBatch

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("q2", "list")


@dataclass
class BaselineResult:
    """What one baseline run did, and how long it took (the window: first get -> last file)."""

    source: str
    batches: int
    events: int  # written + filtered
    written: int
    filtered: int
    files: int
    bytes_written: int
    seconds: float
    events_per_s: float
    latency_p50_s: float | None  # get -> the file holding its last kept event is closed
    latency_p99_s: float | None
    stage_seconds: dict[str, float] = field(default_factory=dict)  # get / find / write


@dataclass
class _Pending:
    record: EventPeaks
    image: np.ndarray  # (B*C, 1, H, W) of its batch
    layout: SlabLayout
    batch: int  # position in the run, for latency


def _bench_batches(config: Config, num_batches: int) -> list[SyntheticBatch]:
    """The replayed batches 0..n-1 (unique sources generated once, as the producer does)."""
    unique = config.replay.unique_batches
    sources: dict[int, SyntheticBatch] = {}
    out = []
    for index in range(num_batches):
        key = index % unique if unique else index
        if key not in sources:
            sources[key] = replay_batch(config, key)
        # the replay producer's batch ids: the same (seed, index) names
        out.append(replace(sources[key], batch_id=f"synthetic-{config.replay.seed}-{index:06d}"))
    return out


def _list_items(config: Config, num_batches: int) -> list[Any]:
    """Items as the producer would send them, with the image array in place of its ref."""
    items = []
    for batch in _bench_batches(config, num_batches):
        item = batch.to_item(image_ref=batch.image, inline=config.replay.transport == "inline")
        if config.replay.transport == "ref":
            item.predictions_ref = batch.predictions_tensor()
        items.append(item)
    return items


def _fill_q2(config: Config, num_batches: int) -> tuple[Any, Any]:
    """Start the replay producer on a fresh Q2 and wait until it put every batch.

    Returns (producer, shard); the producer must stay alive: it owns the image refs.
    """
    import ray

    from cxi_async.actors.q2_shard import connect_shards
    from cxi_async.replay.producer import new_replay_producer

    producer = new_replay_producer(config, 1)
    ray.get(producer.run.remote())
    (shard,) = connect_shards(
        config.queue.name, config.ray.namespace, 1, config.queue.maxsize_per_shard
    )
    return producer, shard


def _process(
    item: Any,
    fetch: Callable[[Any], Any],
    config: Config,
    layouts: Layouts,
) -> tuple[list[EventPeaks], np.ndarray, int, SlabLayout]:
    """(kept event records, image, filtered count, slab layout) of one item, the slow way."""
    batch = q2.decode_item(item, fetch)
    b, c, h, w = batch.original_shape
    image = np.asarray(fetch(batch.image_ref))
    table = reference_find_peaks(
        batch.logits,
        batch.original_shape,
        bfloat16=batch.logits_kind == "bfloat16",
        image=image,
        connectivity=config.peak_finding.connectivity,
    )
    layout = layouts.for_shape(c, h, w)
    pf = config.peak_finding
    default_ev = config.output.photon_energy_ev
    records, filtered, start = [], 0, 0
    for e in range(b):
        count = int(table.counts[e])
        rows = slice(start, start + min(count, pf.max_num_peak))
        start += count
        if count < pf.min_num_peak:
            filtered += 1
            continue
        ss, fs = layout.to_slab(table.panel[rows], table.row[rows], table.col[rows])
        energy = float(batch.photon_energy_ev[e])
        records.append(
            EventPeaks(
                fs=fs.astype(np.float32),
                ss=ss.astype(np.float32),
                total_intensity=table.total_intensity[rows],
                npix=table.npix[rows],
                max_value=table.max_value[rows],
                panel=table.panel[rows].astype(np.int16),
                photon_energy_ev=(default_ev or math.nan) if math.isnan(energy) else energy,
                timestamp=int(batch.timestamp[e]),
                batch_id=batch.batch_id,
                event_index=e,
            )
        )
    return records, image, filtered, layout


def _write(
    path: Path, pending: list[_Pending], layout: SlabLayout, max_num_peak: int, fsync: bool
) -> int:
    """One file the earlier way (per event, per scalar); returns its size in bytes."""
    events = CxiEvents.pack([p.record for p in pending], max_num_peak)

    def fill_frame(i: int, out: np.ndarray) -> None:
        p = pending[i]
        c, b = layout.num_panels, p.record.event_index
        layout.assemble(p.image[b * c : (b + 1) * c, 0], out)

    reference_write_cxi(path, events, layout.slab_shape, fill_frame)
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path.stat().st_size


def run_baseline(
    config: Config, num_batches: int, out_dir: str | os.PathLike, *, source: str = "q2"
) -> BaselineResult:
    """Run the synchronous baseline over the first `num_batches` replayed batches.

    ``source="q2"`` needs Ray initialised (the caller's); it uses a fresh Q2 in
    ``config.ray.namespace`` and kills its actors afterwards. Files go to ``out_dir``.
    """
    if source not in SOURCES:
        raise ValueError(f"source = {source!r} is not allowed; use one of {', '.join(SOURCES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layouts = Layouts(load_slab_layout(config))
    events_per_file = config.output.events_per_file
    fsync = config.output.fsync
    producer = shard = None
    if source == "q2":
        import ray

        producer, shard = _fill_q2(config, num_batches)

        def take(_: int) -> Any:
            return ray.get(shard.get.remote())

        fetch: Callable[[Any], Any] = ray.get
    else:
        items = _list_items(config, num_batches)

        def take(i: int) -> Any:
            return items[i]

        def fetch(x: Any) -> Any:
            return x

    stages = {"get": 0.0, "find": 0.0, "write": 0.0}
    pending: list[_Pending] = []
    got_at: list[float] = []
    done_at: dict[int, float] = {}
    last_event_batch: dict[int, int] = {}  # batch -> kept events not yet in a file
    written = filtered = files = nbytes = 0

    def flush() -> None:
        nonlocal pending, files, nbytes, written
        if not pending:
            return
        t = time.perf_counter()
        path = out_dir / f"baseline-{files:04d}.cxi"
        nbytes += _write(path, pending, pending[0].layout, config.peak_finding.max_num_peak, fsync)
        now = time.perf_counter()
        stages["write"] += now - t
        files += 1
        written += len(pending)
        for p in pending:
            last_event_batch[p.batch] -= 1
            if last_event_batch[p.batch] == 0:
                done_at[p.batch] = now
        pending = []

    try:
        start = time.perf_counter()
        for i in range(num_batches):
            t = time.perf_counter()
            item = take(i)
            got_at.append(t)
            t1 = time.perf_counter()
            stages["get"] += t1 - t
            records, image, nfilt, layout = _process(item, fetch, config, layouts)
            stages["find"] += time.perf_counter() - t1
            filtered += nfilt
            last_event_batch[i] = len(records)
            if not records:
                done_at[i] = time.perf_counter()
            for r in records:
                pending.append(_Pending(r, image, layout, i))
                if len(pending) >= events_per_file:
                    flush()
            del item, image
        flush()
        seconds = time.perf_counter() - start
    finally:
        if source == "q2":
            import ray

            for actor in (producer, shard):
                if actor is not None:
                    ray.kill(actor)
    lat = sorted(done_at[i] - got_at[i] for i in done_at)
    events = written + filtered
    return BaselineResult(
        source=source,
        batches=num_batches,
        events=events,
        written=written,
        filtered=filtered,
        files=files,
        bytes_written=nbytes,
        seconds=seconds,
        events_per_s=events / seconds if seconds else 0.0,
        latency_p50_s=_quantile(lat, 0.5),
        latency_p99_s=_quantile(lat, 0.99),
        stage_seconds=stages,
    )


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def baseline_overrides(
    *,
    dtype: str,
    batch_size: int,
    transport: str,
    zero_copy: bool,
    fsync: bool,
    unique_batches: int,
    num_batches: int,
    namespace: str,
) -> list[str]:
    """--set overrides shared with bench_pipeline.py, so both see the same batches."""
    return [
        "replay.enabled=true",
        f"replay.dtype={dtype}",
        f"replay.batch_size={batch_size}",
        f"replay.transport={transport}",
        f"replay.zero_copy={str(zero_copy).lower()}",
        f"replay.unique_batches={unique_batches}",
        f"replay.num_batches={num_batches}",
        f"output.fsync={str(fsync).lower()}",
        f'ray.namespace="{namespace}"',
        'queue.name="baseline_q2"',
        f"queue.maxsize_per_shard={num_batches}",
        "queue.num_shards=1",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "config.toml"))
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--transport", choices=("inline", "ref"), default="inline")
    parser.add_argument("--zero-copy", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--source", choices=SOURCES, default="q2")
    parser.add_argument("--unique-batches", type=int, default=4)
    parser.add_argument("--out-dir", default=None, help="keep the files here (default: temp)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    namespace = f"cxi-baseline-{uuid.uuid4().hex[:8]}"
    config = load_config(
        args.config,
        baseline_overrides(
            dtype=args.dtype,
            batch_size=args.batch_size,
            transport=args.transport,
            zero_copy=args.zero_copy,
            fsync=args.fsync,
            unique_batches=args.unique_batches,
            num_batches=args.batches,
            namespace=namespace,
        ),
    )
    if args.source == "q2":
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="cxi_baseline_") as tmp:
            out = Path(args.out_dir) if args.out_dir else Path(tmp)
            result = run_baseline(config, args.batches, out, source=args.source)
    finally:
        if args.source == "q2":
            import ray

            ray.shutdown()
    if args.json:
        print(json.dumps(asdict(result), indent=2))
    else:
        print(
            f"baseline ({result.source}): {result.events} events in {result.seconds:.2f} s = "
            f"{result.events_per_s:.2f} events/s; stages "
            + ", ".join(f"{k} {v:.2f} s" for k, v in result.stage_seconds.items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
