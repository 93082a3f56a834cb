"""Shared fixtures: one real local Ray per test session, tiny pipeline configs, CXI readers."""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from cxi_async.config import Config, load_config

_namespaces = itertools.count()


@pytest.fixture(scope="session")
def ray_session():
    """A private local Ray (2 CPUs) for the whole session; tests use fresh namespaces."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_overrides(tmp_path: Path, namespace: str) -> list[str]:
    """A pipeline small enough for tests: 2 panels of 32 x 40 padded to 48 x 48."""
    return [
        f"ray.namespace={namespace}",
        f"output.output_dir={tmp_path / 'out'}",
        "output.fsync=false",
        "output.events_per_file=4",
        "output.max_file_age_s=1.0",
        "processing.num_finders=2",
        "processing.credits=4",
        "processing.finder_num_cpus=0.25",
        "processing.writer_num_cpus=0.25",
        "queue.maxsize_per_shard=4",
        "queue.poll_interval_s=0.02",
        "peak_finding.min_num_peak=5",
        "replay.enabled=true",
        "replay.num_batches=6",
        "replay.batch_size=3",
        "replay.num_panels=2",
        "replay.panel_shape=[32, 40]",
        "replay.padded_shape=[48, 48]",
        "replay.peaks_per_event=12",
        "replay.hit_fraction=0.7",
        "system.log_level=WARNING",
    ]


@pytest.fixture
def make_config(tmp_path):
    """make_config(*overrides) -> a tiny Config in a fresh namespace writing under tmp_path.

    Detached actors (Q2 shards) left in the test's namespaces are killed afterwards.
    """
    namespaces: list[str] = []

    def make(*overrides: str) -> Config:
        namespace = f"test-{os.getpid()}-{next(_namespaces)}"
        namespaces.append(namespace)
        return load_config(None, [*tiny_overrides(tmp_path, namespace), *overrides])

    yield make
    kill_named_actors(namespaces)


def kill_named_actors(namespaces: list[str]) -> None:
    import ray

    if not ray.is_initialized():
        return
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] in namespaces:
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(entry["name"], namespace=entry["namespace"]))


def read_cxi_files(directory: Path, pattern: str = "*.cxi") -> dict[tuple[str, int], dict]:
    """Every event in every .cxi under directory, by (batch_id, event_index)."""
    events: dict[tuple[str, int], dict] = {}
    for path in sorted(directory.glob(pattern)):
        with h5py.File(path, "r") as f:
            r = f["/entry_1/result_1"]
            n = r["nPeaks"][()]
            batch_ids = [b.decode() if isinstance(b, bytes) else b for b in r["batchId"][()]]
            for i, key in enumerate(zip(batch_ids, r["eventIndex"][()].tolist(), strict=True)):
                assert key not in events, f"event {key} written twice ({path})"
                k = int(n[i])
                events[key] = {
                    "file": path,
                    "fs": r["peakXPosRaw"][i, :k],
                    "ss": r["peakYPosRaw"][i, :k],
                    "npix": r["peakNPixels"][i, :k],
                    "intensity": r["peakTotalIntensity"][i, :k],
                    "energy": f["/LCLS/photon_energy_eV"][i],
                    "timestamp": int(f["/LCLS/detector_1/timestamp"][i]),
                    "image": f["/entry_1/data_1/data"][i],
                }
    return events


def check_against_truth(events: dict, truth: dict, panel_height: int) -> tuple[int, int]:
    """Every kept truth event is written once with its exact peaks; returns (kept, filtered)."""
    kept = filtered = 0
    for batch in truth.values():
        for t in batch.truth:
            key = (t.batch_id, t.event_index)
            if not t.kept:
                assert key not in events, f"filtered event {key} was written"
                filtered += 1
                continue
            kept += 1
            assert key in events, f"kept event {key} is missing"
            e = events[key]
            np.testing.assert_allclose(e["ss"], t.panel * panel_height + t.row, atol=1e-3)
            np.testing.assert_allclose(e["fs"], t.col, atol=1e-3)
            np.testing.assert_array_equal(e["npix"], t.npix)
            np.testing.assert_allclose(e["intensity"], t.total_intensity, rtol=1e-5)
            assert e["timestamp"] == t.timestamp
            np.testing.assert_allclose(e["energy"], t.photon_energy_ev, rtol=1e-12)
    return kept, filtered
