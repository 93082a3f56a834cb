"""config.py: defaults, the shipped files, --set overrides, every error sentence, round trip."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from cxi_async.config import (
    Config,
    ConfigError,
    OutputConfig,
    ProcessingConfig,
    ReplayConfig,
    config_to_dict,
    dump_toml,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths (the default output_dir "cxi_out") resolve inside tmp_path."""
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(*args, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------ defaults and shipped files


def test_defaults():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.ray.address is None
    assert cfg.ray.namespace == "peaknet-pipeline"
    assert cfg.queue.name == "peaknet_q2"
    assert cfg.queue.num_shards == 1
    assert cfg.processing.credits == 8
    assert cfg.peak_finding.connectivity == 8
    assert cfg.output.compression == "none"
    assert cfg.replay.panel_shape == (352, 384)
    assert cfg.replay.enabled is False
    assert not (Path.cwd() / "cxi_out").exists()  # validation never creates the directory


def test_empty_file_is_all_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_shipped_config_toml():
    cfg = load_config(REPO / "config.toml")
    assert cfg.ray.address is None
    assert cfg.replay.enabled
    assert (cfg.replay.num_batches, cfg.replay.batch_size) == (40, 8)
    assert (cfg.replay.num_panels, cfg.replay.panel_shape, cfg.replay.padded_shape) == (
        16,
        (352, 384),
        (512, 512),
    )
    assert cfg.replay.dtype == "float32"
    assert cfg.output.output_dir == "cxi_out"
    assert cfg.stop.idle_timeout_s == 5.0
    assert cfg.output.fsync is True


def test_shipped_config_toml_sets_every_key_or_comments_it():
    """config.toml doubles as the reference: every key appears in it (set or commented)."""
    text = (REPO / "config.toml").read_text()
    for section, keys in config_to_dict(Config()).items():
        assert f"[{section}]" in text
        for key in keys:
            assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key}"


def test_shipped_production_toml():
    cfg = load_config(REPO / "examples" / "production.toml", check_paths=False)
    assert cfg.replay.enabled is False
    assert cfg.ray.address == "auto"
    assert (cfg.ray.namespace, cfg.queue.name) == ("peaknet-pipeline", "peaknet_q2")
    assert cfg.queue.num_shards == 4  # peaknet-pipeline-ray's runtime.queue_num_shards default
    assert cfg.geometry.geom_file is not None
    # The placeholder geometry path is caught when paths are checked.
    err = error(REPO / "examples" / "production.toml")
    assert err.key == "geometry.geom_file"


def test_load_accepts_str_path(tmp_path):
    write(tmp_path, "[processing]\ncredits = 3\n")
    assert load_config(str(tmp_path / "c.toml")).processing.credits == 3


def test_int_for_float_key_is_a_float(tmp_path):
    cfg = load_config(write(tmp_path, "[stop]\nidle_timeout_s = 5\n"))
    assert cfg.stop.idle_timeout_s == 5.0
    assert isinstance(cfg.stop.idle_timeout_s, float)


# ------------------------------------------------------------------ --set overrides


def test_set_int_str_bool_float_list():
    cfg = load_config(
        overrides=[
            "processing.credits=16",
            "queue.num_shards=auto",
            "queue.name = my_q",
            'output.file_prefix="run"',
            "output.fsync=false",
            "output.max_file_age_s=2.5",
            "replay.padded_shape=[400, 400]",
            "peak_finding.connectivity=4",
        ]
    )
    assert cfg.processing.credits == 16
    assert cfg.queue.num_shards == "auto"
    assert cfg.queue.name == "my_q"
    assert cfg.output.file_prefix == "run"
    assert cfg.output.fsync is False
    assert cfg.output.max_file_age_s == 2.5
    assert cfg.replay.padded_shape == (400, 400)
    assert cfg.peak_finding.connectivity == 4


def test_set_none_unsets_an_optional_key(tmp_path):
    path = write(tmp_path, '[ray]\naddress = "auto"\n[stop]\nmax_batches = 3\n')
    cfg = load_config(path, ["ray.address=none", "stop.max_batches=null"])
    assert cfg.ray.address is None
    assert cfg.stop.max_batches is None


def test_set_none_is_a_string_where_none_is_not_allowed():
    cfg = load_config(overrides=["output.compression=zstd", "output.compression=none"])
    assert cfg.output.compression == "none"  # last one wins; "none" is a valid compression


def test_set_overrides_the_file(tmp_path):
    path = write(tmp_path, "[processing]\ncredits = 3\nnum_finders = 1\n")
    cfg = load_config(path, ["processing.credits=5"])
    assert (cfg.processing.credits, cfg.processing.num_finders) == (5, 1)


def test_set_value_with_equals_sign():
    assert load_config(overrides=["queue.name=a=b"]).queue.name == "a=b"


def test_set_unknown_key_suggests_the_closest():
    err = error(overrides=["processing.credit=3"])
    assert err.key == "processing.credit"
    assert "processing.credit" in str(err) and "did you mean processing.credits" in str(err)


def test_set_key_in_the_wrong_section_suggests_the_right_one():
    err = error(overrides=["queue.credits=3"])
    assert "did you mean processing.credits" in str(err)


def test_set_unknown_section():
    err = error(overrides=["procesing.credits=3"])
    assert "procesing" in str(err) and "processing.credits" in str(err)


def test_set_without_section():
    err = error(overrides=["credits=3"])
    assert "'credits'" in str(err) and "section.key" in str(err)


def test_set_without_equals():
    err = error(overrides=["processing.credits"])
    assert "processing.credits" in str(err) and "=" in str(err)


def test_set_bad_type():
    err = error(overrides=["processing.credits=many"])
    assert err.key == "processing.credits"
    assert str(err) == (
        'processing.credits = "many" is invalid: expected an integer >= 1 '
        "(from --set processing.credits=many)."
    )


def test_set_bool_for_int_is_rejected():
    err = error(overrides=["processing.num_finders=true"])
    assert "processing.num_finders = true is invalid" in str(err)


def test_set_bad_literal():
    err = error(overrides=["output.compression=lzma"])
    assert str(err).startswith('output.compression = "lzma" is invalid: expected one of ')
    assert '"bitshuffle-lz4", "gzip", "none", "zstd"' in str(err)


# ------------------------------------------------------------------ errors in the file


def test_bad_range_names_key_value_and_rule(tmp_path):
    path = write(tmp_path, "[processing]\ncredits = -1\n")
    err = error(path)
    assert err.key == "processing.credits"
    assert str(err) == (
        f"processing.credits = -1 is invalid: expected an integer >= 1 (in {path})."
    )


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ("[output]\nmax_file_age_s = 0", "output.max_file_age_s", "= 0 "),
        ("[stop]\nidle_timeout_s = -1.5", "stop.idle_timeout_s", "= -1.5 "),
        ("[queue]\nnum_shards = 0", "queue.num_shards", "= 0 "),
        ('[queue]\nnum_shards = "some"', "queue.num_shards", '= "some" '),
        ("[peak_finding]\nconnectivity = 6", "peak_finding.connectivity", "= 6 "),
        ('[replay]\ndtype = "float64"', "replay.dtype", '= "float64" '),
        ("[replay]\npanel_shape = [352]", "replay.panel_shape", "= [352] "),
        ("[replay]\nhit_fraction = 1.5", "replay.hit_fraction", "= 1.5 "),
        ('[output]\nrun = "../up"', "output.run", '= "../up" '),
        ('[system]\nlog_level = "info"', "system.log_level", '= "info" '),
        ('[ray]\nnamespace = ""', "ray.namespace", '= "" '),
        ("[output]\nfsync = 1", "output.fsync", "= 1 "),
    ],
)
def test_invalid_values(tmp_path, text, key, shown):
    err = error(write(tmp_path, text + "\n"))
    assert err.key == key
    assert str(err).startswith(f"{key} {shown}is invalid: expected ")


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path, "[output]\nevents_per_fil = 3\n")
    err = error(path)
    assert err.key == "output.events_per_fil"
    assert str(path) in str(err) and "did you mean output.events_per_file" in str(err)


def test_unknown_section_in_file(tmp_path):
    err = error(write(tmp_path, "[outptu]\nrun = 'x'\n"))
    assert err.key == "outptu" and "[outptu]" in str(err) and "output" in str(err)


def test_section_that_is_not_a_table(tmp_path):
    err = error(write(tmp_path, "output = 3\n"))
    assert err.key == "output" and "output = 3" in str(err)


def test_bad_toml_names_file_and_line(tmp_path):
    path = write(tmp_path, "[processing]\ncredits = 3\nnum_finders = \n")
    err = error(path)
    assert str(path) in str(err) and "line 3" in str(err)


def test_missing_file(tmp_path):
    err = error(tmp_path / "nope.toml")
    assert "nope.toml" in str(err) and "does not exist" in str(err)


# ------------------------------------------------------------------ settings that go together


def test_credits_at_least_num_writers():
    err = error(overrides=["processing.credits=1", "output.num_writers=2"])
    assert err.key == "processing.credits"
    assert "processing.credits = 1" in str(err) and "output.num_writers = 2" in str(err)


def test_replay_credits_hold_a_file():
    err = error(overrides=["replay.enabled=true", "processing.credits=1"])
    assert str(err) == (
        "processing.credits = 1 with replay.batch_size = 8 holds at most 8 events in flight, "
        "fewer than output.events_per_file = 16: raise credits or lower events_per_file."
    )
    # Without replay the batch size is not known in advance: files close on age instead.
    assert load_config(overrides=["processing.credits=2"]).processing.credits == 2


def test_min_peaks_at_most_max_peaks():
    err = error(overrides=["peak_finding.min_num_peak=50", "peak_finding.max_num_peak=20"])
    assert err.key == "peak_finding.min_num_peak"
    assert "min_num_peak = 50" in str(err) and "max_num_peak = 20" in str(err)


def test_run_named_twice():
    err = error(overrides=["output.run='r0001'", "output.run_from_metadata='run'"])
    assert err.key == "output.run_from_metadata"
    assert str(err) == (
        'output.run = "r0001" and output.run_from_metadata = "run" both name the run: '
        "set one of them."
    )
    assert load_config(overrides=["output.run_from_metadata='run'"]).output.run is None


def test_replay_padded_at_least_panel():
    err = error(overrides=["replay.panel_shape=[352, 600]"])
    assert err.key == "replay.padded_shape"
    assert "[512, 512]" in str(err) and "[352, 600]" in str(err)


# ------------------------------------------------------------------ paths


def test_output_dir_existing(tmp_path):
    (tmp_path / "out").mkdir()
    assert load_config(overrides=[f"output.output_dir={tmp_path / 'out'}"])


def test_output_dir_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    err = error(overrides=["output.output_dir=afile"])
    assert err.key == "output.output_dir"
    assert str(err) == 'output.output_dir = "afile" is not a directory.'


def test_output_dir_missing_without_create(tmp_path):
    err = error(overrides=["output.output_dir=new", "output.create_output_dir=false"])
    assert err.key == "output.output_dir" and '"new"' in str(err)
    assert "create_output_dir = false" in str(err)


def test_output_dir_missing_is_not_created_by_validation(tmp_path):
    load_config(overrides=["output.output_dir=a/b/c"])
    assert not (tmp_path / "a").exists()


def test_output_dir_under_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    err = error(overrides=["output.output_dir=afile/sub"])
    assert err.key == "output.output_dir" and "afile" in str(err) and "not a directory" in str(err)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_dir_parent_not_writable_even_for_root():
    err = error(overrides=["output.output_dir=/proc/cxi_async_test/out"])
    assert err.key == "output.output_dir" and "/proc" in str(err) and "not writable" in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_output_dir_not_writable(tmp_path):  # pragma: no cover - runs as non-root only
    (tmp_path / "ro").mkdir(mode=0o500)
    err = error(overrides=["output.output_dir=ro"])
    assert "not writable" in str(err)


def test_geom_file_ok(tmp_path):
    (tmp_path / "d.geom").write_text("clen = 0.1\n")
    assert load_config(overrides=["geometry.geom_file=d.geom"]).geometry.geom_file == "d.geom"


def test_geom_file_missing(tmp_path):
    err = error(overrides=["geometry.geom_file=missing.geom"])
    assert str(err) == 'geometry.geom_file = "missing.geom" does not exist.'


def test_geom_file_is_a_directory(tmp_path):
    (tmp_path / "g").mkdir()
    err = error(overrides=["geometry.geom_file=g"])
    assert err.key == "geometry.geom_file" and "directory" in str(err)


def test_log_file_directory_must_exist(tmp_path):
    assert load_config(overrides=["system.log_file=run.log"]).system.log_file == "run.log"
    err = error(overrides=["system.log_file=nodir/run.log"])
    assert err.key == "system.log_file" and '"nodir/run.log"' in str(err)


def test_check_paths_false_skips_filesystem(tmp_path):
    cfg = load_config(
        overrides=["geometry.geom_file=missing.geom", "system.log_file=nodir/x.log"],
        check_paths=False,
    )
    assert cfg.geometry.geom_file == "missing.geom"


# ------------------------------------------------------------------ round trip


def test_round_trip_defaults(tmp_path):
    cfg = Config()
    assert load_config(write(tmp_path, dump_toml(cfg))) == cfg


def test_round_trip_everything_set(tmp_path):
    (tmp_path / "d.geom").write_text("clen = 0.1\n")
    cfg = load_config(
        overrides=[
            "ray.address=ray://head:10001",
            "ray.num_cpus=3",
            "ray.object_store_memory_gb=1.5",
            "queue.num_shards=auto",
            'queue.name=q "quoted" \\ back\tslash',
            "processing.on_missing_image=write_without_image",
            "geometry.geom_file=d.geom",
            "output.run=r0042",
            "output.photon_energy_ev=9500.5",
            "output.compression=bitshuffle-lz4",
            "system.log_file=x.log",
            "stop.idle_timeout_s=1e-3",
            "stop.max_batches=7",
            "replay.enabled=true",
            "replay.dtype=bfloat16",
            "replay.producer_rate_hz=100",
        ]
    )
    text = dump_toml(cfg)
    assert load_config(write(tmp_path, text)) == cfg
    assert cfg.queue.name == 'q "quoted" \\ back\tslash'


def test_dump_toml_writes_unset_keys_as_comments():
    text = dump_toml(Config())
    assert "# address = (not set)" in text
    assert 'namespace = "peaknet-pipeline"' in text
    assert "panel_shape = [352, 384]" in text


def test_every_optional_key_defaults_to_none():
    """dump_toml writes None as a comment, so it round-trips only if None is the default."""
    for section, values in config_to_dict(Config()).items():
        info = msgspec.inspect.type_info(type(getattr(Config(), section)))
        for field in info.fields:
            optional = isinstance(field.type, msgspec.inspect.UnionType) and any(
                isinstance(t, msgspec.inspect.NoneType) for t in field.type.types
            )
            if optional:
                assert values[field.name] is None, f"{section}.{field.name}"


def test_config_to_dict_is_plain():
    d = config_to_dict(Config())
    assert d["replay"]["panel_shape"] == (352, 384)
    assert msgspec.json.decode(msgspec.json.encode(d))["processing"]["credits"] == 8
    assert d["ray"]["address"] is None


def test_structs_are_frozen_and_replaceable():
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.processing.credits = 3  # type: ignore[misc]
    cfg2 = msgspec.structs.replace(cfg, processing=ProcessingConfig(credits=3))
    assert cfg2.processing.credits == 3 and cfg.processing.credits == 8
    assert Config(output=OutputConfig(num_writers=2), replay=ReplayConfig(enabled=True))


def test_metadata_datasets_and_constants_are_checked():
    ok = load_config(
        overrides=[
            'metadata.datasets={"/LCLS/detector_1/EncoderValue" = "detector_distance"}',
            "metadata.constants={coffset = 0.01, beamline = 'MFX'}",
            "metadata.wavelength_unit=nm",
        ]
    )
    assert ok.metadata.datasets == {"/LCLS/detector_1/EncoderValue": "detector_distance"}
    assert ok.metadata.constants == {"coffset": 0.01, "beamline": "MFX"}
    for path, words in (
        ("LCLS/x", "must be absolute"),
        ("/LCLS/photon_energy_eV", "cxi_async writes /LCLS/photon_energy_eV itself"),
        ("/entry_1/result_1/extra", "cxi_async writes /entry_1 itself"),
    ):
        err = error(overrides=[f'metadata.datasets={{"{path}" = "k"}}'])
        assert err.key == "metadata.datasets" and words in str(err)
    err = error(overrides=["metadata.constants={run = 'x'}"])
    assert err.key == "metadata.constants" and "cxi_async writes itself" in str(err)
    err = error(overrides=["metadata.wavelength_unit=mm"])
    assert err.key == "metadata.wavelength_unit"


def test_assembled_replay_needs_one_panel():
    err = error(overrides=["replay.enabled=true", "replay.layout=assembled"])
    assert err.key == "replay.num_panels" and "replay.num_panels = 1" in str(err)


# ------------------------------------------------------------------ adaptive finder pool


def test_pool_is_fixed_by_default():
    p = load_config().processing
    assert (p.min_finders, p.max_finders) == (None, None)
    assert load_config(REPO / "config.toml").processing.min_finders is None


def test_adaptive_pool_bounds():
    cfg = load_config(overrides=["processing.min_finders=1", "processing.max_finders=8"])
    assert (cfg.processing.min_finders, cfg.processing.num_finders) == (1, 2)
    assert cfg.processing.max_finders == 8
    assert cfg.autoscale.grow_busy == 0.85 and cfg.autoscale.cooldown_s == 10.0


def test_adaptive_pool_needs_both_bounds():
    err = error(overrides=["processing.max_finders=8"])
    assert err.key == "processing.max_finders"
    assert str(err) == (
        "processing.max_finders = 8 is set without processing.min_finders: set both for an "
        "adaptive pool (it starts at num_finders), or neither for a fixed one."
    )
    err = error(overrides=["processing.min_finders=1"])
    assert err.key == "processing.min_finders" and "without processing.max_finders" in str(err)


def test_adaptive_pool_bounds_in_order():
    err = error(overrides=["processing.min_finders=3", "processing.max_finders=2"])
    assert err.key == "processing.min_finders"
    assert str(err) == (
        "processing.min_finders = 3 is greater than processing.max_finders = 2: the pool "
        "could have no size."
    )


def test_adaptive_pool_starts_within_bounds():
    err = error(overrides=["processing.min_finders=4", "processing.max_finders=8"])
    assert err.key == "processing.num_finders"
    assert str(err) == (
        "processing.num_finders = 2 is outside processing.min_finders = 4 .. "
        "processing.max_finders = 8: the adaptive pool starts at num_finders, so set it "
        "between them."
    )
    ok = ["processing.min_finders=4", "processing.max_finders=8", "processing.num_finders=4"]
    assert load_config(overrides=ok).processing.num_finders == 4


def test_adaptive_pool_bound_must_be_a_count():
    err = error(overrides=["processing.max_finders=0"])
    assert str(err) == (
        "processing.max_finders = 0 is invalid: expected an integer >= 1, or none (unset) "
        "(from --set processing.max_finders=0)."
    )


def test_autoscale_hysteresis():
    err = error(overrides=["autoscale.shrink_busy=0.9"])
    assert err.key == "autoscale.shrink_busy"
    assert str(err) == (
        "autoscale.shrink_busy = 0.9 is not below autoscale.grow_busy = 0.85: the pool would "
        "grow and shrink at the same load; keep shrink_busy < grow_busy."
    )
    err = error(overrides=["autoscale.grow_factor=2"])
    assert err.key == "autoscale.shrink_busy"
    assert "shrink_busy x grow_factor = 1.2 must be <= 1" in str(err)
    assert load_config(overrides=["autoscale.grow_factor=2", "autoscale.shrink_busy=0.5"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("autoscale.grow_busy=1.5", "autoscale.grow_busy"),
        ("autoscale.grow_depth=0", "autoscale.grow_depth"),
        ("autoscale.grow_factor=0.5", "autoscale.grow_factor"),
        ("autoscale.cooldown_s=-1", "autoscale.cooldown_s"),
    ],
)
def test_autoscale_ranges(override, key):
    err = error(overrides=[override])
    assert err.key == key and str(err).startswith(f"{key} = ")


# ------------------------------------------------------------------ stepped replay load


def test_rate_steps():
    assert load_config().replay.rate_steps == ()
    cfg = load_config(overrides=["replay.rate_steps=[[0, 50], [30, 400.5]]"])
    assert cfg.replay.rate_steps == ((0.0, 50.0), (30.0, 400.5))


def test_rate_steps_must_increase():
    err = error(overrides=["replay.rate_steps=[[30, 50], [10, 400]]"])
    assert err.key == "replay.rate_steps"
    assert str(err) == (
        "replay.rate_steps = [[30.0, 50.0], [10.0, 400.0]]: step 2 at 10 s does not come after "
        "step 1 at 30 s; list the steps in increasing time."
    )


def test_rate_steps_shape_and_range():
    err = error(overrides=["replay.rate_steps=[[5, 0]]"])
    assert err.key == "replay.rate_steps"
    assert str(err) == (
        "replay.rate_steps = [[5, 0]] is invalid: expected a list whose items are each a list "
        "[a number >= 0, a number > 0] (from --set replay.rate_steps=[[5, 0]])."
    )


def test_round_trip_pool_and_steps(tmp_path):
    cfg = load_config(
        overrides=[
            "processing.min_finders=1",
            "processing.max_finders=6",
            "autoscale.grow_factor=1.25",
            "replay.rate_steps=[[0, 10], [2.5, 40]]",
        ]
    )
    assert load_config(write(tmp_path, dump_toml(cfg))) == cfg
