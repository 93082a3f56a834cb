"""Found travels finder -> coordinator -> writer with its kept events as one msgpack blob: the
round trip must give back exactly what went in, dtypes included, through pickle and Ray."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import ray

from cxi_async.core.messages import EventPeaks, Found


def event(index: int, n: int) -> EventPeaks:
    rng = np.random.default_rng(index)
    return EventPeaks(
        event_index=index,
        fs=rng.random(n, dtype=np.float32),
        ss=rng.random(n, dtype=np.float32),
        total_intensity=rng.random(n, dtype=np.float32),
        npix=rng.integers(1, 9, n, dtype=np.int32),
        max_value=rng.random(n, dtype=np.float32),
        panel=rng.integers(0, 16, n).astype(np.int16),
        photon_energy_ev=9500.5,
        timestamp=(1_700_000_000 << 32) | index,
        batch_id="producer_0_batch_3",
        run="r0042" if index % 2 else None,
        timestamp_missing=bool(index % 3 == 0),
        datasets=(("/LCLS/detector_1/EncoderValue", 101.5),),
    )


def found(image: list) -> Found:
    return Found(
        delivery_id=7,
        batch_id="producer_0_batch_3",
        num_events=8,
        kept=[event(0, 150), event(3, 0), event(5, 2048)],  # an empty peak list too
        filtered=5,
        image=image,
        num_panels=16,
        panel_shape=(352, 384),
        pad_offset=(80, 64),
        truncated_peaks=3,
        notices=[("energy-unit", "info", "photon_wavelength read as nm")],
        find_seconds=0.25,
    )


def assert_same(a: Found, b: Found) -> None:
    for name in a.__struct_fields__:
        if name not in ("kept", "image"):
            assert getattr(a, name) == getattr(b, name), name
    assert len(a.kept) == len(b.kept)
    for x, y in zip(a.kept, b.kept, strict=True):
        for name in x.__struct_fields__:
            u, v = getattr(x, name), getattr(y, name)
            if isinstance(u, np.ndarray):
                assert v.dtype == u.dtype and v.shape == u.shape, name
                assert np.array_equal(u, v), name
            else:
                assert u == v, name


def test_found_pickles_exactly() -> None:
    original = found([])
    assert_same(original, pickle.loads(pickle.dumps(original, protocol=5)))


def test_an_event_array_that_is_not_one_dimensional_is_refused_in_one_sentence() -> None:
    bad = found([])
    bad.kept[0].fs = bad.kept[0].fs.reshape(10, 15)
    with pytest.raises(TypeError, match="not a 1-D numpy array"):
        pickle.dumps(bad, protocol=5)


@ray.remote(num_cpus=0)
class Relay:
    def back(self, value: Found) -> Found:
        return value

    def image_sum(self, value: Found) -> float:
        return float(ray.get(value.image[0]).sum())


def test_found_through_ray_keeps_its_image_ref(ray_session) -> None:
    """The image stays an ObjectRef the receiver can resolve (Ray's borrowing still applies)."""
    image = ray.put(np.ones((16, 1, 8, 8), np.float32))
    original = found([image])
    relay = Relay.remote()
    try:
        back = ray.get(relay.back.remote(original))
        assert_same(original, back)
        assert isinstance(back.image[0], ray.ObjectRef)
        assert ray.get(relay.image_sum.remote(original)) == 16 * 64
    finally:
        ray.kill(relay)
