"""Compare cxi_async's configuration with the producer's (peaknet-pipeline-ray) YAML.

cxi_async and the inference pipeline meet only through Q2's actor names, so a typo in a
namespace or a shard count shows up as a pipeline that waits forever. `check_producer_config`
reads the producer's YAML as the producer does (a missing key takes the producer's default)
and returns one `Check` per setting that must agree; it prints nothing, so `commands` owns
the output and tests compare values.

The producer's layout (keys under `runtime` and `ray`)::

    runtime:
      queue_num_shards: 8
      queue_maxsize_per_shard: 1600
      queue_names: {input_queue: peaknet_q1, output_queue: peaknet_q2}
      enable_output_queue: true
    ray:
      namespace: peaknet-pipeline
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cxi_async.config import Config

__all__ = [
    "PRODUCER_DEFAULTS",
    "Check",
    "ProducerConfigError",
    "ProducerSetting",
    "Status",
    "check_producer_config",
    "compare",
    "producer_settings",
    "read_producer_yaml",
]

#: The producer's defaults for the keys cxi_async must match (peaknet-pipeline-ray's
#: RuntimeConfig: 4 shards of 100; Q2 named "peaknet_q2" in namespace "peaknet-pipeline";
#: the output queue is off unless asked for).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "ray.namespace": "peaknet-pipeline",
    "runtime.queue_names.output_queue": "peaknet_q2",
    "runtime.queue_num_shards": 4,
    "runtime.queue_maxsize_per_shard": 100,
    "runtime.enable_output_queue": False,
}

_EXPECTED = {
    "ray.namespace": (str, "a non-empty string"),
    "runtime.queue_names.output_queue": (str, "a non-empty string"),
    "runtime.queue_num_shards": (int, "an integer >= 1"),
    "runtime.queue_maxsize_per_shard": (int, "an integer >= 1"),
    "runtime.enable_output_queue": (bool, "true or false"),
}


class ProducerConfigError(ValueError):
    """The producer's YAML is missing, unreadable, or not shaped as peaknet-pipeline-ray's."""


class Status(enum.Enum):
    OK = "✓"
    MISMATCH = "✗"
    WARNING = "⚠"


@dataclass(frozen=True)
class Check:
    """One setting compared: `name` is cxi_async's dotted key, `message` says both values."""

    name: str
    status: Status
    message: str

    @property
    def ok(self) -> bool:
        """Warnings pass: they do not stop the two sides from meeting."""
        return self.status is not Status.MISMATCH

    def line(self) -> str:
        return f"{self.status.value} {self.message}"


@dataclass(frozen=True)
class ProducerSetting:
    """A producer value and whether the YAML set it (False: the producer's default)."""

    key: str
    value: Any
    from_file: bool


def read_producer_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The YAML document as a dict; ProducerConfigError for anything the producer can't load."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProducerConfigError(f"Producer configuration {p} does not exist.") from None
    except IsADirectoryError:
        raise ProducerConfigError(
            f"Producer configuration {p} is a directory, not a file."
        ) from None
    except UnicodeDecodeError:
        raise ProducerConfigError(
            f"Producer configuration {p} is not a text file (expected peaknet-pipeline-ray YAML)."
        ) from None
    except OSError as exc:
        raise ProducerConfigError(
            f"Producer configuration {p} cannot be read: {exc.strerror}."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ProducerConfigError(f"{p} is not valid YAML{where}: {problem}.") from None
    if data is None:
        data = {}  # an empty file: the producer runs with all defaults
    if not isinstance(data, dict):
        raise ProducerConfigError(
            f"{p} holds a YAML {type(data).__name__}, not a mapping of sections "
            "(model, runtime, ray, ...) as peaknet-pipeline-ray expects."
        )
    return data


def producer_settings(raw: dict[str, Any], source: str) -> dict[str, ProducerSetting]:
    """The five settings from a loaded YAML, defaults filled in and types checked."""
    out: dict[str, ProducerSetting] = {}
    for key, default in PRODUCER_DEFAULTS.items():
        *sections, leaf = key.split(".")
        table: Any = raw
        walked: list[str] = []
        for section in sections:
            walked.append(section)
            table = table.get(section) if isinstance(table, dict) else None
            if table is None:
                break
            if not isinstance(table, dict):
                raise ProducerConfigError(
                    f"{'.'.join(walked)} in {source} must be a mapping, not {table!r}."
                )
        if isinstance(table, dict) and leaf in table:
            value = table[leaf]
            _check_type(key, value, source)
            out[key] = ProducerSetting(key, value, True)
        else:
            out[key] = ProducerSetting(key, default, False)
    return out


def _check_type(key: str, value: Any, source: str) -> None:
    kind, words = _EXPECTED[key]
    good = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is str:
        good = good and bool(value)
    if kind is int:
        good = good and value >= 1
    if not good:
        raise ProducerConfigError(f"{key} = {value!r} in {source} is invalid: expected {words}.")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _theirs(setting: ProducerSetting, source: str) -> str:
    """'runtime.queue_num_shards = 4 in pipeline.yaml' or '... (producer default)'."""
    text = f"{setting.key} = {_show(setting.value)}"
    return f"{text} in {source}" if setting.from_file else f"{text} (producer default)"


def _must_equal(name: str, ours: Any, theirs: ProducerSetting, source: str) -> Check:
    mine = f"{name} = {_show(ours)}"
    if ours == theirs.value:
        return Check(name, Status.OK, f"{mine} matches {_theirs(theirs, source)}")
    return Check(name, Status.MISMATCH, f"{mine} but {_theirs(theirs, source)}")


def compare(config: Config, settings: dict[str, ProducerSetting], source: str) -> list[Check]:
    """One Check per setting: namespace, queue name, shards, shard size, output queue on."""
    q = config.queue
    checks = [
        _must_equal("ray.namespace", config.ray.namespace, settings["ray.namespace"], source),
        _must_equal("queue.name", q.name, settings["runtime.queue_names.output_queue"], source),
    ]

    shards = settings["runtime.queue_num_shards"]
    if q.num_shards == "auto":
        checks.append(
            Check(
                "queue.num_shards",
                Status.OK,
                f'queue.num_shards = "auto" discovers the shards, so it accepts '
                f"{_theirs(shards, source)}",
            )
        )
    else:
        checks.append(_must_equal("queue.num_shards", q.num_shards, shards, source))

    size = settings["runtime.queue_maxsize_per_shard"]
    mine = f"queue.maxsize_per_shard = {q.maxsize_per_shard}"
    if q.maxsize_per_shard == size.value:
        checks.append(
            Check("queue.maxsize_per_shard", Status.OK, f"{mine} matches {_theirs(size, source)}")
        )
    else:
        checks.append(
            Check(
                "queue.maxsize_per_shard",
                Status.WARNING,
                f"{mine} but {_theirs(size, source)}: the capacity is set by whichever side "
                "creates the shards first",
            )
        )

    enabled = settings["runtime.enable_output_queue"]
    if enabled.value:
        checks.append(
            Check(
                "runtime.enable_output_queue",
                Status.OK,
                f"{_theirs(enabled, source)}: the producer puts its results into Q2",
            )
        )
    else:
        checks.append(
            Check(
                "runtime.enable_output_queue",
                Status.MISMATCH,
                f"{_theirs(enabled, source)}: the producer does not put its results into Q2; "
                "set it to true",
            )
        )
    return checks


def check_producer_config(config: Config, path: str | os.PathLike) -> list[Check]:
    """Read the producer's YAML at `path` and compare it with `config` (see `compare`)."""
    source = str(path)
    return compare(config, producer_settings(read_producer_yaml(path), source), source)
