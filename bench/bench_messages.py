"""What one batch's Found costs the coordinator: Ray's pickling of it and one actor call.

    python bench/bench_messages.py [--events 8] [--peaks 150] [--calls 300] [--json out.json]

A Found travels finder -> coordinator -> writer, so the coordinator deserialises it once and
serialises it once per batch. This compares, in one run on one machine:
  * ``blob``: Found as it is (its kept events pickled as one msgpack blob, `Found.__reduce__`);
  * ``arrays``: the same fields pickled the default way (every event's six small arrays apart),
    which is what Found did before;
  * ``no-ref``: ``blob`` without the image's ObjectRef (what the nested ref costs: Ray's
    borrowing protocol);
  * a bare call (no argument), Ray's own floor per call.
For each: a ray.put + ray.get round trip in the driver (us per batch), and the
CPU of the calling async actor per awaited call (`psutil`, the actor's whole process, so
Ray's own threads are included). Ratios within the run are what to read; machines differ.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import psutil
import ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxi_async.core.messages import EventPeaks, Found  # noqa: E402


def make_found(events: int, peaks: int, image: list) -> Found:
    rng = np.random.default_rng(0)
    kept = [
        EventPeaks(
            event_index=i,
            fs=rng.random(peaks, dtype=np.float32),
            ss=rng.random(peaks, dtype=np.float32),
            total_intensity=rng.random(peaks, dtype=np.float32),
            npix=rng.integers(1, 9, peaks, dtype=np.int32),
            max_value=rng.random(peaks, dtype=np.float32),
            panel=rng.integers(0, 16, peaks).astype(np.int16),
            photon_energy_ev=9500.0,
            timestamp=i,
            batch_id="producer_0_batch_0",
        )
        for i in range(events)
    ]
    return Found(1, "producer_0_batch_0", events, kept, 0, image, 16, (352, 384))


def as_arrays(found: Found) -> tuple:
    """The same fields, pickled the default way (the earlier Found)."""
    return tuple(getattr(found, name) for name in found.__struct_fields__)


def serialise_us(value: object, repeats: int) -> float:
    """ray.put + ray.get of the value in this process, us per round trip."""
    t0 = time.perf_counter()
    for _ in range(repeats):
        ray.get(ray.put(value))
    return (time.perf_counter() - t0) / repeats * 1e6


@ray.remote(num_cpus=0)
class Sink:
    async def take(self, value: object = None) -> None:
        return None


@ray.remote(num_cpus=0)
class Caller:
    async def calls(self, sink: object, value: object, n: int) -> float:
        """CPU of this process per awaited call to `sink.take(value)`, in us."""
        process = psutil.Process()
        before = process.cpu_times()
        for _ in range(n):
            if value is None:
                await sink.take.remote()
            else:
                await sink.take.remote(value)
        after = process.cpu_times()
        return ((after.user + after.system) - (before.user + before.system)) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=8, help="kept events per batch")
    parser.add_argument("--peaks", type=int, default=150, help="peaks per event")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    image = [ray.put(np.zeros(4, np.float32))]
    found = make_found(args.events, args.peaks, image)
    values = {
        "blob": found,
        "arrays": as_arrays(found),
        "no-ref": msgspec.structs.replace(found, image=[]),  # the image ref's share of it
    }
    out: dict = {"events": args.events, "peaks": args.peaks, "calls": args.calls}
    for name, value in values.items():
        out[f"serialise_{name}_us"] = serialise_us(value, 500)
    sink, caller = Sink.remote(), Caller.remote()
    ray.get(caller.calls.remote(sink, None, 20))  # warm up
    for _ in range(2):  # interleaved, twice: the machine may be shared
        for name, value in [("bare", None), *values.items()]:
            us = ray.get(caller.calls.remote(sink, value, args.calls))
            out.setdefault(f"call_{name}_us", []).append(us)
    ray.shutdown()
    print(
        f"Found with {args.events} kept events x {args.peaks} peaks "
        f"({len(pickle.dumps(found, protocol=5))} bytes pickled)"
    )
    print(
        f"  ray.put + ray.get: blob {out['serialise_blob_us']:.0f} us, "
        f"arrays {out['serialise_arrays_us']:.0f} us "
        f"({out['serialise_arrays_us'] / out['serialise_blob_us']:.1f}x)"
    )
    for name in ("bare", "blob", "arrays", "no-ref"):
        runs = " / ".join(f"{us:.0f}" for us in out[f"call_{name}_us"])
        print(f"  caller CPU per awaited call, {name:6s}: {runs} us")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
