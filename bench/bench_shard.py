"""The floor the Q2 protocol sets: what one shard `get` of an inline-logits item costs the shard.

    python bench/bench_shard.py [--batches 24] [--batch-size 8] [--dtype float32]
        [--object-store-gb 2] [--json out.json]

peaknet-pipeline-ray's shards are plain actors whose `get()` returns the item, so Ray
serialises the item's inline logits into a new object on every get: a copy of the whole
tensor (33.6 MB per ePix10k2M event in float32) that no consumer can avoid. This measures
it alone, in one local Ray: a cxi_async-created shard (zero-copy tensors on) holds one item,
and the driver gets and puts it back `--batches` times; the shard's CPU (user and system,
from `psutil`) is taken around each `get` only. The store is small on purpose (2 GB), so
it cycles as in a long run; the first gets, into pages never touched, cost far more (they
are printed, and left out of the steady figure).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import psutil
import ray
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxi_async.actors.q2_shard import ZERO_COPY_ENV, RemoteQ2Shard  # noqa: E402
from cxi_async.core.upstream import ensure_producer_classes  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WARM_UP = 4  # gets into never-touched store pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--object-store-gb", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ensure_producer_classes()
    from peaknet_pipeline_ray.config.data_structures import PipelineOutput

    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=int(args.object_store_gb * 2**30),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": ZERO_COPY_ENV},
    )
    shard = RemoteQ2Shard.options(runtime_env={"env_vars": ZERO_COPY_ENV}).remote(maxsize=4)
    process = psutil.Process(ray.get(shard.__ray_call__.remote(lambda _: os.getpid())))
    panels = 16 * args.batch_size
    logits = torch.randn(panels, 2, 512, 512).to(DTYPES[args.dtype])
    image = ray.put(np.zeros((panels, 1, 512, 512), np.float32))

    def item(i: int) -> object:
        return PipelineOutput(
            predictions=logits,
            predictions_ref=None,
            metadata={},
            batch_id=f"batch_{i}",
            original_image_ref=image,
            preprocessing_metadata=None,
        )

    ray.get(shard.put.remote(item(0)))
    rows = []
    for i in range(args.batches):
        before = process.cpu_times()
        ref = shard.get.remote()
        ray.wait([ref], fetch_local=False)
        after = process.cpu_times()
        ray.get(shard.put.remote(item(i + 1)))
        del ref
        rows.append((after.user - before.user, after.system - before.system))
    ray.shutdown()
    mb_per_event = logits.nbytes / args.batch_size / 1e6
    steady = rows[WARM_UP:]
    per_event = [(u + s) / args.batch_size * 1e3 for u, s in steady]
    out = {
        "dtype": args.dtype,
        "mb_per_event": mb_per_event,
        "first_gets_ms_per_event": [(u + s) / args.batch_size * 1e3 for u, s in rows[:WARM_UP]],
        "steady_ms_per_event_median": statistics.median(per_event),
        "steady_user_ms_per_event": statistics.median(u / args.batch_size * 1e3 for u, _ in steady),
        "steady_system_ms_per_event": statistics.median(
            s / args.batch_size * 1e3 for _, s in steady
        ),
    }
    first = " / ".join(f"{v:.1f}" for v in out["first_gets_ms_per_event"])
    print(
        f"shard get of {args.dtype} inline logits, {mb_per_event:.1f} MB per event: "
        f"steady {out['steady_ms_per_event_median']:.1f} ms of shard CPU per event "
        f"(user {out['steady_user_ms_per_event']:.1f}, system "
        f"{out['steady_system_ms_per_event']:.1f}); first {WARM_UP} gets {first} ms per event"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
