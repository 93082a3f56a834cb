"""Every metadata form the real sources send (q2-protocol.md), read exactly; none rejects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cxi_async.core.metadata import HC_EV_ANGSTROM, MetadataRules, read_metadata, read_timestamps

B = 3
SECONDS = 1_700_000_000
PACKED = (SECONDS << 32) | 123_456_789


def packed(seconds: int, ns: int) -> int:
    return (seconds << 32) | ns


def stamps(value, b: int = B) -> list[int]:
    out, ok = read_timestamps(value, b)
    assert out.dtype == np.uint64 and ok.all()
    return [int(v) for v in out]


# ------------------------------------------------------------------ timestamps


def test_integers_are_the_packed_value():
    assert stamps(PACKED) == [PACKED] * B
    assert stamps([PACKED, PACKED + 1, 2**64 - 1]) == [PACKED, PACKED + 1, 2**64 - 1]
    assert stamps(np.array([PACKED] * B, np.uint64)) == [PACKED] * B
    assert stamps(np.array([PACKED] * B, np.uint64).view(np.int64)) == [PACKED] * B


def test_psana2_float64_holds_the_packed_value():
    # lclstreamer's Psana2Timestamp: numpy.array(event.timestamp, dtype=float64).
    value = np.array([PACKED, PACKED + 2**20, PACKED + 2**21], np.float64)
    assert stamps(value) == [int(v) for v in value]
    assert stamps(float(PACKED)) == [int(float(PACKED))] * B


def test_float_seconds_are_time_time():
    assert stamps(SECONDS + 0.5) == [packed(SECONDS, 500_000_000)] * B
    assert stamps([SECONDS + 0.25, SECONDS + 1.0, 0.0]) == [
        packed(SECONDS, 250_000_000),
        packed(SECONDS + 1, 0),
        0,
    ]
    # A fraction that rounds up to a whole second carries into the seconds.
    assert stamps(1000.9999999999) == [packed(1001, 0)] * B


def test_psana1_strings_have_plain_integer_nanoseconds():
    # "1700000000.5" is 5 ns (psana1's EventId.time() joined with a '.'), not half a second.
    assert stamps("1700000000.5") == [packed(SECONDS, 5)] * B
    assert stamps(b"1700000000.123456789") == [packed(SECONDS, 123_456_789)] * B
    values = np.array(["1700000000.5", "1700000001.10", "1700000002"])
    assert stamps(values) == [packed(SECONDS, 5), packed(SECONDS + 1, 10), packed(SECONDS + 2, 0)]
    assert stamps(values.astype("S")) == stamps(values)
    assert stamps(list(values)) == stamps(values)
    assert stamps(np.array("1700000000.5")) == [packed(SECONDS, 5)] * B  # 0-d, per batch


def test_unreadable_timestamps_are_flagged_per_event():
    out, ok = read_timestamps(["1700000000.5", "soon", "1700000000.1234567890"], B)
    assert ok.tolist() == [True, False, False] and out.tolist() == [packed(SECONDS, 5), 0, 0]
    out, ok = read_timestamps([SECONDS + 0.5, float("nan"), -1.0], B)
    assert ok.tolist() == [True, False, False]
    out, ok = read_timestamps([-1, 2], 2)
    assert ok.tolist() == [False, True] and out.tolist() == [0, 2]


def test_a_timestamp_that_cannot_be_read_costs_no_event():
    for value in ({"t": 1}, [1, 2], True, np.zeros((B, 2))):
        meta = read_metadata({"timestamp": value}, B)
        assert meta.timestamp.tolist() == [0] * B
        assert meta.timestamp_missing.all()
        (notice,) = meta.notices
        assert notice.kind == "unreadable:timestamp" and "timestamps_missing" in notice.text


def test_no_timestamp_is_missing_without_a_notice():
    meta = read_metadata({}, B)
    assert meta.timestamp_missing.all() and meta.notices == ()


# ------------------------------------------------------------------ photon energy


def test_energy_keys_in_order():
    md = {"photon_energies": [9000.0, 9100.0, 9200.0], "photon_wavelength": 1.0}
    np.testing.assert_array_equal(read_metadata(md, B).photon_energy_ev, [9000, 9100, 9200])
    md["photon_energy"] = 9500
    np.testing.assert_array_equal(read_metadata(md, B).photon_energy_ev, [9500.0] * B)


def test_wavelength_units():
    nm = {"photon_wavelength": 0.13}
    angstrom = {"photon_wavelength": 1.3}
    expected = HC_EV_ANGSTROM / 1.3
    for md, unit in ((nm, "auto"), (nm, "nm"), (angstrom, "auto"), (angstrom, "angstrom")):
        meta = read_metadata(md, B, MetadataRules(wavelength_unit=unit))
        np.testing.assert_allclose(meta.photon_energy_ev, [expected] * B, rtol=1e-15)
        (info,) = meta.notices
        assert info.level == "info" and "photon_wavelength" in info.text
    meta = read_metadata(nm, B, MetadataRules(wavelength_unit="angstrom"))  # the unit mix-up
    assert meta.photon_energy_ev[0] == pytest.approx(expected * 10)
    assert any(n.kind == "energy-range:photon_wavelength" for n in meta.notices)


def test_auto_unit_threshold_is_0_4():
    meta = read_metadata({"photon_wavelength": [0.3999, 0.4, 2.0]}, B)
    np.testing.assert_allclose(
        meta.photon_energy_ev, HC_EV_ANGSTROM / np.array([3.999, 0.4, 2.0]), rtol=1e-15
    )
    assert [n.level for n in meta.notices] == ["info"]  # 3.1, 31.0 and 6.2 keV: in range


def test_energy_from_tensors_and_numpy_scalars():
    for value in (torch.tensor([9000.0] * B), np.float32(9000.0), [9000] * B):
        np.testing.assert_array_equal(
            read_metadata({"photon_energy": value}, B).photon_energy_ev, [9000.0] * B
        )


def test_bad_energies_are_unknown_and_named():
    meta = read_metadata({"photon_energy": [0.0, -1.0, np.inf]}, B)
    assert np.isnan(meta.photon_energy_ev).all()
    meta = read_metadata({"photon_energies": [9000.0, 9100.0], "photon_wavelength": 1.3}, B)
    np.testing.assert_allclose(meta.photon_energy_ev, HC_EV_ANGSTROM / 1.3)  # the next key
    assert any(n.kind == "unreadable:photon_energies" for n in meta.notices)


def test_streaming_metadata_reads_in_full():
    md = {
        "producer_id": 0,
        "batch_index": 4,
        "timestamp": SECONDS + 0.5,
        "photon_energies": [8000.0, 8100.5, 7900.25],
        "run_id": "run_0_0",
        "detector_settings": {"gain": "high", "exposure_time": 0.001, "binning": "1x1"},
        "experimental_conditions": {"temperature": 295.0, "pressure": 1013.25},
    }
    meta = read_metadata(md, B)
    np.testing.assert_array_equal(meta.photon_energy_ev, [8000.0, 8100.5, 7900.25])
    assert meta.timestamp.tolist() == [packed(SECONDS, 500_000_000)] * B
    assert not meta.timestamp_missing.any()
    assert [n.level for n in meta.notices] == ["info"]


# ------------------------------------------------------------------ datasets


def test_datasets_per_batch_per_event_and_missing():
    rules = MetadataRules(datasets={"/LCLS/detector_1/EncoderValue": "detector_distance"})
    meta = read_metadata({"detector_distance": 123.5}, B, rules)
    np.testing.assert_array_equal(meta.datasets["/LCLS/detector_1/EncoderValue"], [123.5] * B)
    meta = read_metadata({"detector_distance": np.array([1, 2, 3])}, B, rules)
    np.testing.assert_array_equal(meta.datasets["/LCLS/detector_1/EncoderValue"], [1.0, 2, 3])
    for md, kind in (({}, "dataset-missing"), ({"detector_distance": "far"}, "dataset-unreadable")):
        meta = read_metadata(md, B, rules)
        assert np.isnan(meta.datasets["/LCLS/detector_1/EncoderValue"]).all()
        assert [n.kind for n in meta.notices] == [f"{kind}:detector_distance"]


# ------------------------------------------------------------------ hypothesis

seconds = st.integers(0, 2**32 - 1)
nanoseconds = st.integers(0, 999_999_999)


@settings(max_examples=300, deadline=None)
@given(s=seconds, ns=nanoseconds, form=st.sampled_from(["int", "str", "bytes", "numpy-str"]))
def test_exact_forms_round_trip(s, ns, form):
    value = {
        "int": packed(s, ns),
        "str": f"{s}.{ns}",
        "bytes": f"{s}.{ns}".encode(),
        "numpy-str": np.array([f"{s}.{ns}"] * B),
    }[form]
    assert stamps(value) == [packed(s, ns)] * B


@settings(max_examples=300, deadline=None)
@given(s=st.integers(1, 2**32 - 1), ns=nanoseconds)
def test_float_forms_are_within_their_precision(s, ns):
    exact = packed(s, ns)
    (got,) = stamps(float(exact), 1)  # psana2: float64 of the packed value
    assert abs(got - exact) <= 2 ** (exact.bit_length() - 53)
    t = s + ns / 1e9  # time.time(): float seconds
    (got,) = stamps(t, 1)
    got_s, got_ns = got >> 32, got & 0xFFFFFFFF
    assert got_ns < 1_000_000_000
    assert abs((got_s - s) * 1_000_000_000 + got_ns - ns) <= max(1, t * 2**-52 * 1e9)


energy_values = st.floats(1_000.0, 50_000.0)


@settings(max_examples=200, deadline=None)
@given(
    ev=st.lists(energy_values, min_size=B, max_size=B),
    form=st.sampled_from(["photon_energy", "photon_energies", "nm", "angstrom"]),
    container=st.sampled_from([list, np.array, torch.tensor]),
)
def test_energy_forms_agree(ev, form, container):
    ev = np.array(ev)
    rules = MetadataRules()
    if form in ("photon_energy", "photon_energies"):
        md = {form: container(ev.tolist())}
    else:
        lam = HC_EV_ANGSTROM / ev / (10.0 if form == "nm" else 1.0)
        if ((lam < 0.4) != (form == "nm")).any():  # beyond what "auto" can tell apart
            rules = MetadataRules(wavelength_unit="nm" if form == "nm" else "angstrom")
        md = {"photon_wavelength": container(lam.tolist())}
    got = read_metadata(md, B, rules).photon_energy_ev
    rtol = 1e-6 if container is torch.tensor else 1e-12  # torch.tensor makes float32
    np.testing.assert_allclose(got, ev, rtol=rtol)
