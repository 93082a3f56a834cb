"""Configuration: a TOML file plus ``--set section.key=value`` overrides -> typed msgspec Structs.

Every field has a default, so an empty file (or no file) is a valid configuration. Loading
validates types and ranges (msgspec ``Meta`` constraints), then the settings that only make
sense together, then (optionally) the paths, and reports the first problem as one
:class:`ConfigError` sentence that names the dotted key, the bad value and what is allowed.

Relative paths (``output.output_dir``, ``geometry.geom_file``, ``system.log_file``) are relative
to the working directory of the process, not to the configuration file.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta
from msgspec import inspect as mi

__all__ = [
    "AutoscaleConfig",
    "Config",
    "ConfigError",
    "DebugConfig",
    "GeometryConfig",
    "MetadataConfig",
    "OutputConfig",
    "PeakFindingConfig",
    "PlacementConfig",
    "ProcessingConfig",
    "QueueConfig",
    "RayConfig",
    "ReplayConfig",
    "StopConfig",
    "SystemConfig",
    "config_to_dict",
    "dump_toml",
    "load_config",
]

# Constrained scalar types: msgspec enforces them while decoding, and _describe() turns them
# back into words for error messages.
Count = Annotated[int, Meta(ge=1)]
NonNegInt = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0)]
NonNegSeconds = Annotated[float, Meta(ge=0)]
Cpus = Annotated[float, Meta(ge=0)]
Positive = Annotated[float, Meta(gt=0)]
Fraction = Annotated[float, Meta(ge=0, le=1)]
NonEmpty = Annotated[str, Meta(min_length=1)]
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # also for run names from Q2 metadata (q2.py)
SafeName = Annotated[str, Meta(pattern=SAFE_NAME)]  # becomes part of file names
Shape2 = tuple[Count, Count]
Amount = Annotated[float, Meta(ge=0)]  # of a Ray custom resource


class ConfigError(ValueError):
    """A configuration problem, as one sentence naming the dotted key, the value and the rule."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class RayConfig(_Section):
    """Where the Ray cluster is."""

    address: NonEmpty | None = None  # None: local Ray; "auto", "host:6379", "ray://host:10001"
    namespace: NonEmpty = "peaknet-pipeline"  # Ray namespace of the Q2 shards (producer's)
    num_cpus: Count | None = None  # CPUs of a local Ray (None: all); ignored when connecting
    object_store_memory_gb: Positive | None = None  # object store of a local Ray (None: Ray's)


class QueueConfig(_Section):
    """Which Q2 to drain and how to poll it."""

    name: NonEmpty = "peaknet_q2"  # shard actors are named "<name>_shard_<i>"
    num_shards: Count | Literal["auto"] = 1  # must equal the producer's; "auto": discover
    maxsize_per_shard: Count = 100  # capacity of a shard that cxi_async creates itself
    poll_interval_s: Seconds = 0.05  # longest sleep between polls of an empty Q2
    wait_for_producer_s: NonNegSeconds = 0.0  # num_shards="auto": wait this long for shards
    # Items without preprocessing_metadata (lclstreamer's PeaknetPreprocessingPipeline: one
    # assembled image per event): the real size (None: the geometry's single panel, or no
    # padding) and where the padding is ("center": floor(dH/2) rows on top, as lclstreamer).
    unpadded_shape: Shape2 | None = None
    pad_style: Literal["bottom-right", "center"] = "center"  # lclstreamer's default
    warn_no_data_s: Seconds = 60.0  # warn once when no batch arrived this long (from start or last)


class ProcessingConfig(_Section):
    """Finder pool and backpressure."""

    num_finders: Count = 2  # long-lived peak-finder actors (an adaptive pool's starting size)
    # An adaptive pool (both set; num_finders within them) grows and shrinks between these,
    # as [autoscale] decides; neither set: num_finders, fixed.
    min_finders: Count | None = None
    max_finders: Count | None = None
    credits: Count = 8  # most batches taken from Q2 and not yet acknowledged by a writer
    finder_inbox: Count = 2  # bounded asyncio inbox of each finder (batches)
    writer_inbox: Count = 8  # bounded asyncio inbox of each writer (batches)
    finder_num_cpus: Cpus = 1.0  # Ray CPUs reserved per finder
    writer_num_cpus: Cpus = 1.0  # Ray CPUs reserved per writer
    # An image that is gone (its producer exited): write the peaks without it, flagged, or
    # reject the batch. CrystFEL indexes from the peak lists, so the default loses no hit.
    on_missing_image: Literal["reject", "write_without_image"] = "write_without_image"


class AutoscaleConfig(_Section):
    """Advanced: when the adaptive pool (processing.min_finders/max_finders) grows and shrinks.

    The defaults suit the coordinator's 1-s health ticks; core/autoscale.py says why each is.
    """

    grow_busy: Fraction = 0.85  # grow only while the finders are at least this busy ...
    grow_depth: Count = 2  # ... and Q2 rises, or holds at least this many batches, not falling
    grow_after_s: NonNegSeconds = 3.0  # ... for this long
    grow_factor: Annotated[float, Meta(ge=1)] = 1.5  # grow to max(n + 1, ceil(n x this))
    shrink_busy: Fraction = 0.6  # shrink by one while one finder fewer would be at most this busy
    shrink_after_s: NonNegSeconds = 30.0  # ... and Q2 has been empty this long
    cooldown_s: NonNegSeconds = 10.0  # no two changes closer than this (a finder's start-up)


class PlacementConfig(_Section):
    """Where Ray puts the finders and writers (the coordinator turns this into actor options)."""

    finder_resources: dict[str, Amount] = {}  # custom resources per finder, e.g. {cxi_cpu = 1}
    writer_resources: dict[str, Amount] = {}  # e.g. {output_disk = 1}: the node that owns the disk
    finder_strategy: Literal["DEFAULT", "SPREAD"] = "DEFAULT"  # SPREAD: finders across nodes
    # A placement group of one bundle per finder, reserved before any finder starts:
    # STRICT_SPREAD = one finder per node, guaranteed; "none": no placement group.
    finder_placement_group: Literal["none", "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = (
        "none"
    )
    writer_node_ip: NonEmpty | None = None  # pin writers to the alive node with this IP
    finder_label_selector: dict[str, str] = {}  # node labels a finder needs, e.g. {role = "cpu"}
    writer_label_selector: dict[str, str] = {}  # node labels a writer needs


class PeakFindingConfig(_Section):
    """Logits -> peaks."""

    min_num_peak: NonNegInt = 10  # events with fewer peaks are not written (not hits)
    max_num_peak: Count = 2048  # peaks kept per event (more are truncated and counted)
    connectivity: Literal[4, 8] = 8  # pixel connectivity of a peak within a panel
    weighted_centre: bool = False  # intensity-weighted centre (needs the image) instead of mean


class GeometryConfig(_Section):
    """Detector geometry."""

    geom_file: NonEmpty | None = None  # CrystFEL .geom; None: panels stacked along the slow scan


class OutputConfig(_Section):
    """CXI files."""

    output_dir: NonEmpty = "cxi_out"  # files go to <output_dir>/<run>/
    file_prefix: SafeName = "peaknet"  # first part of every file name
    run: SafeName | None = None  # sub-directory and file-name label; None: the start time
    run_from_metadata: NonEmpty | None = None  # metadata key naming each event's run
    events_per_file: Count = 16  # a file is closed when it holds this many events ...
    max_file_age_s: Seconds = 10.0  # ... or when its first event is this old
    idle_flush_s: Seconds = 1.0  # ... or when Q2 has been empty and its batches parked this long
    compression: Literal["none", "bitshuffle-lz4", "zstd", "gzip"] = "none"  # of /data
    create_output_dir: bool = True  # create output_dir when missing (else it is an error)
    num_writers: Count = 1  # writer actors, each writing its own files
    fsync: bool = True  # fsync each file before the rename that makes it visible
    photon_energy_ev: Positive | None = None  # used when items carry no energy or wavelength


class MetadataConfig(_Section):
    """How Q2 metadata is read, and what of it goes into the files."""

    wavelength_unit: Literal["auto", "angstrom", "nm"] = "auto"  # of photon_wavelength
    datasets: dict[NonEmpty, NonEmpty] = {}  # CXI dataset path -> metadata key, per event
    constants: dict[NonEmpty, float | str] = {}  # file attributes (and .geom keys CrystFEL uses)


class SystemConfig(_Section):
    """Logging and progress."""

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"  # driver and actors
    log_file: NonEmpty | None = None  # also log to this file (its directory must exist)
    progress_interval_s: Seconds = 5.0  # seconds between progress lines


class StopConfig(_Section):
    """When to stop (Q2 has no end-of-stream marker)."""

    idle_timeout_s: Seconds | None = None  # Q2 empty and nothing in flight this long; None: never
    max_batches: Count | None = None  # stop after this many batches; None: no limit
    wait_for_first_batch_s: Seconds | None = None  # stop if no batch came this long from start


class ReplayConfig(_Section):
    """Built-in synthetic Q2 producer (demo, tests, bench)."""

    enabled: bool = False  # true: feed Q2 with synthetic batches of the shape below
    num_batches: Count = 40  # batches to put
    batch_size: Count = 8  # events per batch (B)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # logits dtype (model precision)
    seed: NonNegInt = 0  # random seed of the synthetic peaks
    transport: Literal["inline", "ref"] = "inline"  # logits inline torch tensor or predictions_ref
    zero_copy: bool = True  # set RAY_ENABLE_ZERO_COPY_TORCH_TENSORS in producer and shards
    num_panels: Count = 16  # panels per event (C)
    panel_shape: Shape2 = (352, 384)  # real pixels per panel (H_orig, W_orig)
    padded_shape: Shape2 = (512, 512)  # model input (H, W): bottom-right, assembled: pad_style
    peaks_per_event: NonNegInt = 100  # peaks drawn in a hit event
    hit_fraction: Fraction = 0.8  # fraction of events with enough peaks to be kept
    producer_rate_hz: Positive | None = None  # events/s put; None: as fast as Q2 takes them
    # A stepped load: [[seconds, events/s], ...], the rate from that many seconds after the
    # producer's start (increasing times; before the first: producer_rate_hz).
    rate_steps: tuple[tuple[NonNegSeconds, Positive], ...] = ()
    unique_batches: Count | None = None  # generate this many, then replay them with new ids
    events_per_run: NonNegInt = 0  # > 0: metadata["run"] numbers runs of this many events
    # The metadata and batch ids of one real source: "packed" (integer timestamps, Angstrom),
    # "psana2" (float64 packed timestamps, nm), "psana1" (strings, nm), "streaming"
    # (time.time() per batch, photon_energies in eV).
    metadata_style: Literal["packed", "psana2", "psana1", "streaming"] = "packed"
    restart_batch_ids_every: Count | None = None  # batch ids restart (a new producer job)
    # "assembled": one image per event without preprocessing_metadata, padded with
    # queue.pad_style, as lclstreamer's PeaknetPreprocessingPipeline (needs num_panels = 1).
    layout: Literal["panels", "assembled"] = "panels"
    pattern: Literal["random", "lattice"] = "random"  # lattice: stills of a crystal (lattice.py)
    cell: tuple[Positive, Positive, Positive, Positive, Positive, Positive] = (
        79.1,
        79.1,
        37.9,
        90.0,
        90.0,
        90.0,
    )  # lattice: a, b, c in Angstrom, alpha, beta, gamma in degrees (default: lysozyme)
    lattice_type: Literal[
        "triclinic",
        "monoclinic",
        "orthorhombic",
        "tetragonal",
        "rhombohedral",
        "hexagonal",
        "cubic",
    ] = "tetragonal"  # lattice: CrystFEL lattice_type, written to replay.cell
    centering: Literal["P", "A", "B", "C", "I", "F", "R", "H"] = "P"  # lattice: CrystFEL centering


class DebugConfig(_Section):
    """Fault-injection drills (tests, fire drills); leave at 0 in production."""

    write_delay_s: NonNegSeconds = 0.0  # extra seconds before each CXI file is written
    find_delay_s: NonNegSeconds = 0.0  # extra seconds in each finder batch
    init_delay_s: NonNegSeconds = 0.0  # extra seconds in each finder's and writer's __init__
    fail_init: Literal["", "finder", "writer"] = ""  # every such actor raises in __init__
    reply_delay_s: NonNegSeconds = 0.0  # a writer holds its reply to submit() this long
    die_after_renames: NonNegInt = 0  # writer 0 exits after this many renames, before FileDone


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The whole configuration; ``Config()`` is the all-defaults one."""

    ray: RayConfig = msgspec.field(default_factory=RayConfig)
    queue: QueueConfig = msgspec.field(default_factory=QueueConfig)
    processing: ProcessingConfig = msgspec.field(default_factory=ProcessingConfig)
    autoscale: AutoscaleConfig = msgspec.field(default_factory=AutoscaleConfig)
    placement: PlacementConfig = msgspec.field(default_factory=PlacementConfig)
    peak_finding: PeakFindingConfig = msgspec.field(default_factory=PeakFindingConfig)
    geometry: GeometryConfig = msgspec.field(default_factory=GeometryConfig)
    output: OutputConfig = msgspec.field(default_factory=OutputConfig)
    metadata: MetadataConfig = msgspec.field(default_factory=MetadataConfig)
    system: SystemConfig = msgspec.field(default_factory=SystemConfig)
    stop: StopConfig = msgspec.field(default_factory=StopConfig)
    replay: ReplayConfig = msgspec.field(default_factory=ReplayConfig)
    debug: DebugConfig = msgspec.field(default_factory=DebugConfig)


# --------------------------------------------------------------------------- schema helpers


def _schema() -> dict[str, dict[str, mi.Type]]:
    """{section: {key: msgspec type info}}, in declaration order."""
    info = mi.type_info(Config)
    assert isinstance(info, mi.StructType)
    out: dict[str, dict[str, mi.Type]] = {}
    for sec in info.fields:
        assert isinstance(sec.type, mi.StructType)
        out[sec.name] = {f.name: f.type for f in sec.type.fields}
    return out


_SCHEMA = _schema()
_ALL_KEYS = [f"{s}.{k}" for s, keys in _SCHEMA.items() for k in keys]


def _bounds(t: mi.IntType | mi.FloatType) -> str:
    parts = [
        f"{op} {_fmt(v)}"
        for op, v in ((">=", t.ge), (">", t.gt), ("<=", t.le), ("<", t.lt))
        if v is not None
    ]
    return (" " + " and ".join(parts)) if parts else ""


def _describe(t: mi.Type) -> str:
    """Words for what a type accepts, e.g. 'an integer >= 1 or "auto"'."""
    if isinstance(t, mi.IntType):
        return "an integer" + _bounds(t)
    if isinstance(t, mi.FloatType):
        return "a number" + _bounds(t)
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.StrType):
        if t.pattern == SAFE_NAME:
            return "a name of letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        return "a non-empty string" if t.min_length else "a string"
    if isinstance(t, mi.NoneType):
        return "none"
    if isinstance(t, mi.LiteralType):
        if len(t.values) == 1:
            return _fmt(t.values[0])
        return "one of " + ", ".join(_fmt(v) for v in t.values)
    if isinstance(t, mi.TupleType):
        if len({repr(x) for x in t.item_types}) > 1:
            return "a list [" + ", ".join(_describe(x) for x in t.item_types) + "]"
        return f"a list of {len(t.item_types)} values, each {_describe(t.item_types[0])}"
    if isinstance(t, mi.VarTupleType):
        return f"a list whose items are each {_describe(t.item_type)}"
    if isinstance(t, mi.DictType):
        return f"a table {{name = value, ...}} whose values are each {_describe(t.value_type)}"
    if isinstance(t, mi.UnionType):
        # None last: "a number > 0, or none (unset)".
        words = [_describe(x) for x in t.types if not isinstance(x, mi.NoneType)]
        text = " or ".join(words)
        return text + ", or none (unset)" if _accepts_none(t) else text
    return type(t).__name__  # pragma: no cover - no other types in the schema


def _accepts_none(t: mi.Type) -> bool:
    return isinstance(t, mi.NoneType) or (
        isinstance(t, mi.UnionType) and any(isinstance(x, mi.NoneType) for x in t.types)
    )


def _suggest(key: str) -> str:
    """' (did you mean "x.y"?)' for the closest valid dotted key, or ''."""
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in _ALL_KEYS if k.rsplit(".", 1)[-1] == leaf]
    close = same_leaf or difflib.get_close_matches(key, _ALL_KEYS, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key, list(_SCHEMA), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------- TOML writing


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(k: str) -> str:
    """A table key as TOML writes it: bare when it can be, else quoted."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def _fmt(v: Any) -> str:
    """A value as TOML writes it (also used in error messages); None is 'none'."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_fmt(x)}" for k, x in v.items()) + "}"
    return repr(v)


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """The configuration as dicts of plain values (tuples, None kept), e.g. for JSON reports."""
    return msgspec.to_builtins(cfg)


def dump_toml(cfg: Config) -> str:
    """The configuration as TOML that :func:`load_config` reads back to an equal Config.

    TOML has no null: unset (None) keys are written as comments, which load as their default
    (None for every optional key).
    """
    lines: list[str] = []
    for section, values in config_to_dict(cfg).items():
        if lines:
            lines.append("")
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{key} = {_fmt(value)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"Configuration file {path} does not exist.") from None
    except IsADirectoryError:
        raise ConfigError(f"Configuration file {path} is a directory, not a file.") from None
    except OSError as exc:
        raise ConfigError(f"Configuration file {path} cannot be read: {exc.strerror}.") from None
    try:
        return msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None


def _parse_value(text: str, ftype: mi.Type) -> Any:
    """An override value: TOML if it parses, else a bare word (none/null -> None if allowed)."""
    text = text.strip()
    try:
        parsed = msgspec.toml.decode(f"v = {text}\n")
    except msgspec.DecodeError:
        parsed = None
    if isinstance(parsed, dict) and list(parsed) == ["v"]:
        return parsed["v"]
    if text.lower() in ("none", "null") and _accepts_none(ftype):
        return None
    return text


def _apply_override(raw: dict[str, Any], override: str) -> str:
    """Apply one "section.key=value" to the raw dict; returns the dotted key."""
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(
            f"--set {override!r} has no '=': write it as section.key=value "
            f"(e.g. processing.credits=16).",
            key=key,
        )
    section, dot, name = key.partition(".")
    if not dot or "." in name:
        raise ConfigError(
            f"--set key {key!r} is not of the form section.key{_suggest(key)}.", key=key
        )
    if section not in _SCHEMA:
        raise ConfigError(f"--set {key}: there is no section [{section}]{_suggest(key)}.", key=key)
    if name not in _SCHEMA[section]:
        raise ConfigError(
            f"--set {key}: section [{section}] has no key {name!r}{_suggest(key)}.", key=key
        )
    table = raw.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{section} must be a table ([{section}]), not {_fmt(table)}.", section)
    table[name] = _parse_value(text, _SCHEMA[section][name])
    return key


def _check_known_keys(raw: dict[str, Any], source: str) -> None:
    for section, table in raw.items():
        if section not in _SCHEMA:
            raise ConfigError(
                f"{source}: unknown section [{section}]{_suggest(section)}; the sections are "
                f"{', '.join(_SCHEMA)}.",
                key=section,
            )
        if not isinstance(table, dict):
            raise ConfigError(
                f"{source}: {section} = {_fmt(table)} must be a table ([{section}]).", key=section
            )
        for name in table:
            if name not in _SCHEMA[section]:
                key = f"{section}.{name}"
                raise ConfigError(
                    f"{source}: unknown key {key}{_suggest(key)}.",
                    key=key,
                )


def _lookup(raw: dict[str, Any], section: str, name: str) -> Any:
    return raw.get(section, {}).get(name)


def _decode(raw: dict[str, Any], sources: dict[str, str]) -> Config:
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        _, _, path = msg.rpartition(" - at `$.")
        parts = path.rstrip("`").split("[", 1)[0].split(".")
        if len(parts) != 2 or parts[0] not in _SCHEMA or parts[1] not in _SCHEMA[parts[0]]:
            raise ConfigError(f"Invalid configuration: {msg}.") from None  # pragma: no cover
        section, name = parts
        key = f"{section}.{name}"
        value = _lookup(raw, section, name)
        expected = _describe(_SCHEMA[section][name])
        raise ConfigError(
            f"{key} = {_fmt(value)} is invalid: expected {expected} "
            f"({sources.get(key, 'in the configuration')}).",
            key=key,
        ) from None


def _check_consistency(cfg: Config) -> None:
    p, o, r, pf = cfg.processing, cfg.output, cfg.replay, cfg.peak_finding
    if p.credits < o.num_writers:
        raise ConfigError(
            f"processing.credits = {p.credits} is less than output.num_writers = "
            f"{o.num_writers}, so some writer could never hold a batch: raise credits or lower "
            f"num_writers.",
            key="processing.credits",
        )
    if r.enabled and p.credits * r.batch_size < o.events_per_file:
        raise ConfigError(
            f"processing.credits = {p.credits} with replay.batch_size = {r.batch_size} holds at "
            f"most {p.credits * r.batch_size} events in flight, fewer than output.events_per_file"
            f" = {o.events_per_file}: raise credits or lower events_per_file.",
            key="processing.credits",
        )
    if pf.min_num_peak > pf.max_num_peak:
        raise ConfigError(
            f"peak_finding.min_num_peak = {pf.min_num_peak} is greater than "
            f"peak_finding.max_num_peak = {pf.max_num_peak}: no event could be kept.",
            key="peak_finding.min_num_peak",
        )
    if o.run is not None and o.run_from_metadata is not None:
        raise ConfigError(
            f"output.run = {_fmt(o.run)} and output.run_from_metadata = "
            f"{_fmt(o.run_from_metadata)} both name the run: set one of them.",
            key="output.run_from_metadata",
        )
    for axis, (real, padded) in enumerate(zip(r.panel_shape, r.padded_shape, strict=True)):
        if padded < real:
            raise ConfigError(
                f"replay.padded_shape = {_fmt(r.padded_shape)} is smaller than replay.panel_shape"
                f" = {_fmt(r.panel_shape)} along axis {axis}: padding only adds pixels.",
                key="replay.padded_shape",
            )
    _check_replay_layout(cfg)
    _check_rate_steps(cfg)
    _check_pool(cfg)
    _check_metadata(cfg)
    _check_placement(cfg)


def _check_replay_layout(cfg: Config) -> None:
    """Replayed items without preprocessing_metadata must be readable as configured."""
    r, q = cfg.replay, cfg.queue
    assembled = r.layout == "assembled" or r.metadata_style == "streaming"
    if not (r.enabled and assembled):
        return
    why = (
        'replay.layout = "assembled"'
        if r.layout == "assembled"
        else ('replay.metadata_style = "streaming"')
    )
    if r.num_panels != 1:
        raise ConfigError(
            f"{why} sends one image per event, but replay.num_panels = {r.num_panels}: "
            "set replay.num_panels = 1.",
            key="replay.num_panels",
        )
    padded = tuple(r.panel_shape) != tuple(r.padded_shape)
    if padded and q.unpadded_shape is not None and tuple(q.unpadded_shape) != tuple(r.panel_shape):
        raise ConfigError(
            f"{why} pads replay.panel_shape = {_fmt(r.panel_shape)} to replay.padded_shape = "
            f"{_fmt(r.padded_shape)}, but queue.unpadded_shape = {_fmt(q.unpadded_shape)}: "
            "they must agree.",
            key="queue.unpadded_shape",
        )


def _check_rate_steps(cfg: Config) -> None:
    steps = cfg.replay.rate_steps
    for k in range(1, len(steps)):
        if steps[k][0] <= steps[k - 1][0]:
            raise ConfigError(
                f"replay.rate_steps = {_fmt(steps)}: step {k + 1} at {steps[k][0]:g} s does not "
                f"come after step {k} at {steps[k - 1][0]:g} s; list the steps in increasing time.",
                key="replay.rate_steps",
            )


def _check_pool(cfg: Config) -> None:
    """An adaptive pool has both bounds, in order, around num_finders; hysteresis holds."""
    p, a = cfg.processing, cfg.autoscale
    low, high = p.min_finders, p.max_finders
    if (low is None) != (high is None):
        given, missing = (
            ("min_finders", "max_finders") if high is None else ("max_finders", "min_finders")
        )
        raise ConfigError(
            f"processing.{given} = {_fmt(low if high is None else high)} is set without "
            f"processing.{missing}: set both for an adaptive pool (it starts at num_finders), "
            "or neither for a fixed one.",
            key=f"processing.{given}",
        )
    if low is not None and high is not None:
        if low > high:
            raise ConfigError(
                f"processing.min_finders = {low} is greater than processing.max_finders = "
                f"{high}: the pool could have no size.",
                key="processing.min_finders",
            )
        if cfg.placement.finder_placement_group != "none":
            raise ConfigError(
                "processing.min_finders / max_finders (an adaptive pool) cannot be used with "
                f'placement.finder_placement_group = "{cfg.placement.finder_placement_group}", '
                "which reserves a fixed set of bundles: choose one.",
                key="processing.min_finders",
            )
        if not low <= p.num_finders <= high:
            raise ConfigError(
                f"processing.num_finders = {p.num_finders} is outside processing.min_finders = "
                f"{low} .. processing.max_finders = {high}: the adaptive pool starts at "
                "num_finders, so set it between them.",
                key="processing.num_finders",
            )
    if a.shrink_busy >= a.grow_busy:
        raise ConfigError(
            f"autoscale.shrink_busy = {_fmt(a.shrink_busy)} is not below autoscale.grow_busy = "
            f"{_fmt(a.grow_busy)}: the pool would grow and shrink at the same load; keep "
            "shrink_busy < grow_busy.",
            key="autoscale.shrink_busy",
        )
    if a.shrink_busy * a.grow_factor > 1 + 1e-9:
        raise ConfigError(
            f"autoscale.shrink_busy = {_fmt(a.shrink_busy)} with autoscale.grow_factor = "
            f"{_fmt(a.grow_factor)} could shrink the pool right after it grew "
            f"(shrink_busy x grow_factor = {a.shrink_busy * a.grow_factor:g} must be <= 1): "
            "lower either.",
            key="autoscale.shrink_busy",
        )


_DATASET_PATH = re.compile(r"(?:/[A-Za-z0-9_.-]+)+")
# What cxi_async writes itself (cxi.py); a metadata dataset may not land on or inside it.
_WRITTEN_PATHS = ("/entry_1", "/LCLS/photon_energy_eV", "/LCLS/detector_1/timestamp")
# The writer's own file attributes (actors/writer.py); cxi.py's are cxi.RESERVED_ATTRS.
_WRITER_ATTRS = frozenset(
    {
        "min_num_peak",
        "geometry_file",
        "geometry_sha256",
        "batch_id_source",
        "run",
        "images_missing_events",
        "timestamps_missing",
    }
)


def _check_metadata(cfg: Config) -> None:
    """Dataset paths HDF5 can create, apart from the ones cxi_async writes; safe names."""
    md = cfg.metadata
    for path, key in md.datasets.items():
        where = f"metadata.datasets[{_toml_str(path)}] = {_toml_str(key)}"
        if not _DATASET_PATH.fullmatch(path):
            raise ConfigError(
                f'{where}: the dataset path must be absolute, like "/LCLS/detector_1/'
                "EncoderValue\" (letters, digits, '.', '_', '-' between slashes).",
                key="metadata.datasets",
            )
        clash = next((w for w in _WRITTEN_PATHS if path == w or path.startswith(w + "/")), None)
        if clash is not None:
            raise ConfigError(
                f"{where}: cxi_async writes {clash} itself; choose another dataset path.",
                key="metadata.datasets",
            )
    if md.constants:
        from cxi_async.core.cxi import RESERVED_ATTRS  # h5py: only when there are constants
    for name in md.constants:
        if name in _WRITER_ATTRS or name in RESERVED_ATTRS:
            raise ConfigError(
                f"metadata.constants: {_toml_str(name)} is a file attribute cxi_async writes "
                "itself; choose another name.",
                key="metadata.constants",
            )
        if not re.fullmatch(SAFE_NAME, name):
            raise ConfigError(
                f"metadata.constants: {_toml_str(name)} is not a name of letters, digits, "
                "'.', '_' or '-' (it becomes a file attribute).",
                key="metadata.constants",
            )


# Ray's node-label syntax (Kubernetes labels), copied so that the config module needs no Ray.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*/)?{_LABEL}")
_LABEL_SELECTOR = re.compile(rf"!?(?:in)?\({_LABEL}(?:, ?{_LABEL})*\)|!?{_LABEL}")
_RAY_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _check_placement(cfg: Config) -> None:
    """Resource names and amounts Ray accepts, an IP for writer_node_ip, label syntax."""
    pl = cfg.placement
    for role in ("finder", "writer"):
        key = f"placement.{role}_resources"
        resources: dict[str, float] = getattr(pl, f"{role}_resources")
        for name, amount in resources.items():
            if not name.strip():
                raise ConfigError(f"{key} = {_fmt(resources)} has an empty resource name.", key)
            if name in _RAY_BUILTIN_RESOURCES:
                raise ConfigError(
                    f"{key} = {_fmt(resources)} names Ray's built-in resource {name!r}: set "
                    f"processing.{role}_num_cpus for CPUs; {key} is for custom resources, the "
                    f"names given to `ray start --resources`.",
                    key,
                )
            if 0 < amount < 1e-4:
                raise ConfigError(
                    f"{key} = {_fmt(resources)} asks for {amount:g} {name!r}: Ray counts "
                    "resources in steps of 0.0001, so use 0 or at least 0.0001.",
                    key,
                )
        key = f"placement.{role}_label_selector"
        selector: dict[str, str] = getattr(pl, f"{role}_label_selector")
        for label, value in selector.items():
            if not _LABEL_KEY.fullmatch(label):
                raise ConfigError(
                    f"{key} = {_fmt(selector)} has an invalid label name {label!r}: expected "
                    "letters, digits, '-', '_' or '.' (at most 63, starting and ending with a "
                    "letter or digit), optionally after a 'prefix/'.",
                    key,
                )
            if not _LABEL_SELECTOR.fullmatch(value):
                raise ConfigError(
                    f"{key} = {_fmt(selector)} has an invalid selector {label} = {_fmt(value)}: "
                    'expected a label value, "!value", "in(a, b)" or "!in(a, b)" (values of '
                    "letters, digits, '-', '_' or '.', at most 63).",
                    key,
                )
    _check_placement_group(cfg)
    if pl.writer_node_ip is not None:
        try:
            ipaddress.ip_address(pl.writer_node_ip)
        except ValueError:
            key = "placement.writer_node_ip"
            raise ConfigError(
                f"{key} = {_fmt(pl.writer_node_ip)} is not an IP address: give the IP of the "
                "node that owns the output disk, as `ray status` or ray.nodes() shows it.",
                key,
            ) from None


def _check_placement_group(cfg: Config) -> None:
    """A finder placement group replaces the other finder placement settings."""
    pl, key = cfg.placement, "placement.finder_placement_group"
    if pl.finder_placement_group == "none":
        return
    group = _fmt(pl.finder_placement_group)
    if pl.finder_strategy != "DEFAULT":
        raise ConfigError(
            f"placement.finder_strategy = {_fmt(pl.finder_strategy)} and {key} = {group} both "
            f'place the finders: keep finder_strategy = "DEFAULT" (the group\'s strategy '
            "decides).",
            "placement.finder_strategy",
        )
    if pl.finder_label_selector:
        raise ConfigError(
            f"placement.finder_label_selector = {_fmt(pl.finder_label_selector)} cannot be used "
            f"with {key} = {group}: ask for a custom resource of those nodes in "
            "placement.finder_resources instead.",
            "placement.finder_label_selector",
        )
    if cfg.processing.finder_num_cpus <= 0 and not any(pl.finder_resources.values()):
        raise ConfigError(
            f"{key} = {group} needs each finder to reserve something, but "
            "processing.finder_num_cpus = 0 and placement.finder_resources is empty: give "
            "either a positive amount.",
            key,
        )


def _probe_writable(directory: Path) -> str | None:
    """None if a file can be created in ``directory``, else why not (works as root too)."""
    if not directory.is_dir():
        return "is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return "is not writable"
    try:
        with tempfile.TemporaryFile(dir=directory, prefix=".cxi_async_probe_"):
            pass
    except OSError as exc:
        return f"is not writable ({exc.strerror})"
    return None


def _check_paths(cfg: Config) -> None:
    out = Path(cfg.output.output_dir)
    key = "output.output_dir"
    if out.exists():
        why = _probe_writable(out)
        if why:
            raise ConfigError(f"{key} = {_fmt(str(out))} {why}.", key=key)
    elif not cfg.output.create_output_dir:
        raise ConfigError(
            f"{key} = {_fmt(str(out))} does not exist and output.create_output_dir = false: "
            f"create it or set create_output_dir = true.",
            key=key,
        )
    else:
        parent = out.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        why = _probe_writable(parent)
        if why:
            raise ConfigError(
                f"{key} = {_fmt(str(out))} cannot be created: its nearest existing parent "
                f"{parent} {why}.",
                key=key,
            )

    geom = cfg.geometry.geom_file
    if geom is not None:
        key = "geometry.geom_file"
        try:
            with open(geom, "rb") as fh:
                fh.read(1)
        except FileNotFoundError:
            raise ConfigError(f"{key} = {_fmt(geom)} does not exist.", key=key) from None
        except IsADirectoryError:
            msg = f"{key} = {_fmt(geom)} is a directory, not a file."
            raise ConfigError(msg, key=key) from None
        except OSError as exc:
            raise ConfigError(
                f"{key} = {_fmt(geom)} cannot be read ({exc.strerror}).", key=key
            ) from None

    log = cfg.system.log_file
    if log is not None:
        key = "system.log_file"
        if Path(log).is_dir():
            raise ConfigError(f"{key} = {_fmt(log)} is a directory, not a file.", key=key)
        parent = Path(log).absolute().parent
        if not parent.is_dir():
            raise ConfigError(
                f"{key} = {_fmt(log)} is in {parent}, which is not an existing directory.", key=key
            )


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    *,
    check_paths: bool = True,
) -> Config:
    """Read ``path`` (None: all defaults), apply ``--set`` overrides, validate, return Config.

    ``overrides`` are ``"section.key=value"`` strings; the value is read as TOML (``4``, ``2.5``,
    ``true``, ``"x"``, ``[1, 2]``), a bare word as a string, and ``none``/``null`` as None for
    keys that may be unset. They are applied before decoding, so they are checked like the file.
    ``check_paths=False`` skips the filesystem checks (e.g. checking a config for another host).
    """
    source = str(path) if path is not None else "defaults"
    raw: dict[str, Any] = _read_toml(Path(path)) if path is not None else {}
    _check_known_keys(raw, source)
    sources = {f"{s}.{k}": f"in {source}" for s, t in raw.items() if isinstance(t, dict) for k in t}
    for override in overrides:
        key = _apply_override(raw, override)
        sources[key] = f"from --set {override.strip()}"
    cfg = _decode(raw, sources)
    _check_consistency(cfg)
    if check_paths:
        _check_paths(cfg)
    return cfg
