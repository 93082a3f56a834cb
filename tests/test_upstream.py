"""End to end with items shaped as the real upstream sends them (q2-protocol.md), real Ray.

Each test replays one real source's forms (replay.metadata_style / layout) and checks every
written event against the truth, matched by its psana timestamp: batch ids are not unique.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import ray

from cxi_async.pipeline import Pipeline
from cxi_async.replay.producer import new_replay_producer, truth_by_index
from cxi_async.replay.synthetic import SyntheticBatch
from tests.test_faults import finish, wait_for

pytestmark = pytest.mark.usefixtures("ray_session")

PANEL_HEIGHT = 32


def written_events(directory: Path) -> list[dict]:
    """Every event of every .cxi in directory, whatever its batch id."""
    out = []
    for path in sorted(directory.glob("*.cxi")):
        with h5py.File(path, "r") as f:
            r = f["/entry_1/result_1"]
            n = r["nPeaks"][()]
            for i in range(len(n)):
                k = int(n[i])
                out.append(
                    {
                        "file": path,
                        "attrs": dict(f.attrs),
                        "batch_id": r["batchId"][i].decode(),
                        "event_index": int(r["eventIndex"][i]),
                        "ss": r["peakYPosRaw"][i, :k],
                        "fs": r["peakXPosRaw"][i, :k],
                        "npix": r["peakNPixels"][i, :k],
                        "intensity": r["peakTotalIntensity"][i, :k],
                        "energy": float(f["/LCLS/photon_energy_eV"][i]),
                        "timestamp": int(f["/LCLS/detector_1/timestamp"][i]),
                        "image": f["/entry_1/data_1/data"][i],
                    }
                )
    return out


def check_by_timestamp(
    events: list[dict], batches: list[SyntheticBatch], *, images: bool = True
) -> int:
    """Every kept truth event is written exactly once, with its exact peaks, energy and psana
    timestamp; returns how many."""
    by_stamp = {}
    for e in events:
        key = (e["timestamp"], e["event_index"])
        assert key not in by_stamp, f"event {key} written twice"
        by_stamp[key] = e
    kept = [t for b in batches for t in b.truth if t.kept]
    assert len(kept) == len(events)
    for t in kept:
        e = by_stamp[(t.timestamp, t.event_index)]
        assert e["batch_id"] == t.batch_id
        np.testing.assert_allclose(e["ss"], t.panel * PANEL_HEIGHT + t.row, atol=1e-3)
        np.testing.assert_allclose(e["fs"], t.col, atol=1e-3)
        np.testing.assert_array_equal(e["npix"], t.npix)
        if images:
            np.testing.assert_allclose(e["intensity"], t.total_intensity, rtol=1e-5)
        else:
            assert not e["intensity"].any()
        assert e["energy"] == pytest.approx(t.photon_energy_ev, rel=1e-12)
        assert e["attrs"]["timestamps_missing"] == 0
    return len(kept)


# psana1's strings are also in the assembled test of the default set.
@pytest.mark.parametrize("style", ["psana2", pytest.param("psana1", marks=pytest.mark.slow)])
async def test_lclstreamer_forms_with_restarting_batch_ids(make_config, style):
    """Float64 or string timestamps, nanometre wavelengths, ids that restart: all written."""
    config = make_config(
        f"replay.metadata_style={style}",
        "replay.restart_batch_ids_every=2",
        'metadata.datasets={"/LCLS/detector_1/EncoderValue" = "detector_distance"}',
        'metadata.constants={beamline = "MFX", coffset = 0.01}',
    )
    pipeline = await Pipeline.start(config)
    final = await finish(pipeline)
    batches = truth_by_index(config)
    assert len({b.batch_id for b in batches}) == 2  # six batches, two ids: three "jobs"
    kept = check_by_timestamp(written_events(pipeline.output_dir), batches)
    assert final["events_written"] == kept
    assert final["events_doubled"] == final["events_rejected"] == 0
    distance = {t.timestamp: b.metadata["detector_distance"] for b in batches for t in b.truth}
    for path in pipeline.output_dir.glob("*.cxi"):
        with h5py.File(path, "r") as f:
            assert f.attrs["beamline"] == "MFX" and f.attrs["coffset"] == 0.01
            stamps = f["/LCLS/detector_1/timestamp"][()]
            encoder = f["/LCLS/detector_1/EncoderValue"][()]
            assert encoder.dtype == np.float64
            assert encoder.tolist() == [distance[int(t)] for t in stamps]
    assert "coffset = 0.01" in (pipeline.output_dir / "peaknet.geom").read_text()


@pytest.mark.slow  # long: the default set stays under 10 minutes on 2 cores
async def test_streaming_form_without_images(make_config):
    """The upstream's streaming producer: time.time() per batch, photon_energies, no image."""
    config = make_config(
        "replay.metadata_style=streaming",
        "replay.num_panels=1",
        "replay.peaks_per_event=6",
        "queue.unpadded_shape=[32, 40]",
    )
    pipeline = await Pipeline.start(config)
    final = await finish(pipeline)
    events = written_events(pipeline.output_dir)
    kept = check_by_timestamp(events, truth_by_index(config), images=False)
    assert final["events_written"] == kept and final["events_rejected"] == 0
    assert all(e["attrs"]["images_missing"] for e in events)


async def test_assembled_centre_padded_images(make_config):
    """lclstreamer's PeaknetPreprocessingPipeline: one image per event, padded in the centre."""
    config = make_config(
        "replay.layout=assembled",
        "replay.metadata_style=psana1",
        "replay.num_panels=1",
        "replay.peaks_per_event=6",
        "queue.pad_style=center",
        "queue.unpadded_shape=[32, 40]",
    )
    pipeline = await Pipeline.start(config)
    final = await finish(pipeline)
    batches = truth_by_index(config)
    assert batches[0].preprocessing_metadata is None
    events = written_events(pipeline.output_dir)
    assert check_by_timestamp(events, batches) == final["events_written"]
    top, left = (48 - 32) // 2, (48 - 40) // 2
    images = {
        (t.timestamp, t.event_index): b.image[t.event_index, 0, top : top + 32, left : left + 40]
        for b in batches
        for t in b.truth
    }
    for e in events:
        assert e["image"].shape == (32, 40)
        np.testing.assert_array_equal(e["image"], images[(e["timestamp"], e["event_index"])])


async def test_images_outlive_a_producer_that_exits_after_they_were_read(make_config):
    """The inference job ends while its hits wait for their file: the images are kept."""
    config = make_config(
        "replay.enabled=false",
        "replay.num_batches=3",
        "queue.maxsize_per_shard=8",
        "output.events_per_file=100",
        "output.max_file_age_s=3.0",
        "stop.idle_timeout_s=1.0",
    )
    producer = new_replay_producer(config, num_shards=1)
    await producer.run.remote()
    pipeline = await Pipeline.start(config)
    await wait_for(lambda s: s["batches_taken"] == 3 and s["batches_at_finders"] == 0, pipeline)
    ray.kill(producer)  # the owner of every original_image_ref, before any file is written
    final = await finish(pipeline)
    assert final["events_without_image"] == 0
    batches = truth_by_index(config)
    events = written_events(pipeline.output_dir)
    assert check_by_timestamp(events, batches) == final["events_written"]
    panels = config.replay.num_panels
    first_panel = {
        (t.timestamp, t.event_index): b.image[t.event_index * panels, 0, :PANEL_HEIGHT, :40]
        for b in batches
        for t in b.truth
    }
    for e in events:  # the stacked slab starts with panel 0
        truth_image = first_panel[(e["timestamp"], e["event_index"])]
        np.testing.assert_array_equal(e["image"][:PANEL_HEIGHT], truth_image)
        assert e["attrs"]["images_missing_events"] == 0
