"""producer_config: cxi_async's Q2 settings against real peaknet-pipeline-ray YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxi_async.config import Config, load_config
from cxi_async.core.producer_config import (
    PRODUCER_DEFAULTS,
    Check,
    ProducerConfigError,
    Status,
    check_producer_config,
    producer_settings,
    read_producer_yaml,
)

DATA = Path(__file__).parent / "data"
MATCHING = DATA / "producer-q2.yaml"
NAMES = [
    "ray.namespace",
    "queue.name",
    "queue.num_shards",
    "queue.maxsize_per_shard",
    "runtime.enable_output_queue",
]


def production(*overrides: str) -> Config:
    """The settings of examples/production.toml's Q2 (4 shards of 100, default names)."""
    return load_config(None, ["queue.num_shards=4", *overrides], check_paths=False)


def by_name(checks: list[Check]) -> dict[str, Check]:
    assert [c.name for c in checks] == NAMES
    return {c.name: c for c in checks}


def test_matching_yaml_passes_every_check():
    checks = by_name(check_producer_config(production(), MATCHING))
    assert all(c.status is Status.OK for c in checks.values())
    src = str(MATCHING)
    assert checks["queue.num_shards"].line() == (
        f"✓ queue.num_shards = 4 matches runtime.queue_num_shards = 4 in {src}"
    )
    assert checks["ray.namespace"].message == (
        f'ray.namespace = "peaknet-pipeline" matches ray.namespace = "peaknet-pipeline" in {src}'
    )
    assert checks["queue.name"].message == (
        f'queue.name = "peaknet_q2" matches runtime.queue_names.output_queue = "peaknet_q2" '
        f"in {src}"
    )


def test_examples_production_toml_matches_the_matching_yaml():
    example = Path(__file__).parents[1] / "examples" / "production.toml"
    config = load_config(example, check_paths=False)
    assert all(c.ok for c in check_producer_config(config, MATCHING))


@pytest.mark.parametrize(
    ("override", "name", "expected"),
    [
        (
            "ray.namespace=other",
            "ray.namespace",
            'ray.namespace = "other" but ray.namespace = "peaknet-pipeline" in {src}',
        ),
        (
            "queue.name=results",
            "queue.name",
            'queue.name = "results" but runtime.queue_names.output_queue = "peaknet_q2" in {src}',
        ),
        (
            "queue.num_shards=1",
            "queue.num_shards",
            "queue.num_shards = 1 but runtime.queue_num_shards = 4 in {src}",
        ),
    ],
)
def test_each_mismatch_fails_only_its_own_check(override, name, expected):
    checks = by_name(check_producer_config(production(override), MATCHING))
    assert checks[name].status is Status.MISMATCH
    assert not checks[name].ok
    assert checks[name].line() == "✗ " + expected.format(src=MATCHING)
    others = [c for c in checks.values() if c.name != name]
    assert all(c.status is Status.OK for c in others)


def test_maxsize_mismatch_is_only_a_warning():
    checks = by_name(check_producer_config(production("queue.maxsize_per_shard=1600"), MATCHING))
    size = checks["queue.maxsize_per_shard"]
    assert size.status is Status.WARNING
    assert size.ok
    assert size.line().startswith(
        f"⚠ queue.maxsize_per_shard = 1600 but runtime.queue_maxsize_per_shard = 100 in {MATCHING}"
    )
    assert all(c.ok for c in checks.values())


def test_auto_shards_accept_any_count_and_say_so():
    checks = by_name(check_producer_config(production("queue.num_shards=auto"), MATCHING))
    shards = checks["queue.num_shards"]
    assert shards.status is Status.OK
    assert shards.message == (
        'queue.num_shards = "auto" discovers the shards, so it accepts '
        f"runtime.queue_num_shards = 4 in {MATCHING}"
    )


def test_missing_keys_take_the_producer_defaults():
    path = DATA / "producer-defaults.yaml"
    settings = producer_settings(read_producer_yaml(path), str(path))
    assert {k: s.value for k, s in settings.items()} == {
        **PRODUCER_DEFAULTS,
        "runtime.enable_output_queue": True,
    }
    assert [k for k, s in settings.items() if s.from_file] == ["runtime.enable_output_queue"]

    checks = by_name(check_producer_config(production(), path))
    assert all(c.status is Status.OK for c in checks.values())
    assert checks["queue.num_shards"].message == (
        "queue.num_shards = 4 matches runtime.queue_num_shards = 4 (producer default)"
    )
    # cxi_async's own default is 1 shard, the producer's 4: caught even with no key in the file.
    checks = by_name(check_producer_config(load_config(None, check_paths=False), path))
    assert checks["queue.num_shards"].line() == (
        "✗ queue.num_shards = 1 but runtime.queue_num_shards = 4 (producer default)"
    )


def test_output_queue_off_by_default_fails():
    checks = by_name(check_producer_config(production(), DATA / "producer-no-q2.yaml"))
    enabled = checks["runtime.enable_output_queue"]
    assert enabled.status is Status.MISMATCH
    assert enabled.line() == (
        "✗ runtime.enable_output_queue = false (producer default): the producer does not put "
        "its results into Q2; set it to true"
    )


def test_output_queue_disabled_fails():
    path = DATA / "producer-q2-disabled.yaml"
    checks = by_name(check_producer_config(production(), path))
    assert [c.name for c in checks.values() if not c.ok] == ["runtime.enable_output_queue"]
    assert checks["runtime.enable_output_queue"].message.startswith(
        f"runtime.enable_output_queue = false in {path}: "
    )


def test_malformed_yaml_is_one_sentence():
    path = DATA / "producer-malformed.yaml"
    with pytest.raises(ProducerConfigError) as err:
        check_producer_config(production(), path)
    assert str(err.value) == (
        f"{path} is not valid YAML at line 6, column 1: found unexpected end of stream."
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- runtime\n- ray\n", "{p} holds a YAML list, not a mapping of sections"),
        ("just words\n", "{p} holds a YAML str, not a mapping of sections"),
        ("runtime: 4\n", "runtime in {p} must be a mapping, not 4."),
        ("runtime:\n  queue_names: [a, b]\n", "runtime.queue_names in {p} must be a mapping"),
        (
            "runtime:\n  queue_num_shards: four\n",
            "runtime.queue_num_shards = 'four' in {p} is invalid: expected an integer >= 1.",
        ),
        (
            "runtime:\n  queue_num_shards: 0\n",
            "runtime.queue_num_shards = 0 in {p} is invalid: expected an integer >= 1.",
        ),
        (
            "runtime:\n  queue_maxsize_per_shard: true\n",
            "runtime.queue_maxsize_per_shard = True in {p} is invalid: expected an integer",
        ),
        (
            "runtime:\n  enable_output_queue: 'yes'\n",
            "runtime.enable_output_queue = 'yes' in {p} is invalid: expected true or false.",
        ),
        (
            "ray:\n  namespace: ''\n",
            "ray.namespace = '' in {p} is invalid: expected a non-empty string.",
        ),
    ],
)
def test_yaml_not_shaped_like_the_producers(tmp_path, text, message):
    p = tmp_path / "pipeline.yaml"
    p.write_text(text)
    with pytest.raises(ProducerConfigError) as err:
        check_producer_config(production(), p)
    assert str(err.value).startswith(message.format(p=p))


def test_empty_yaml_is_all_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n")
    checks = by_name(check_producer_config(production(), p))
    assert [c.name for c in checks.values() if not c.ok] == ["runtime.enable_output_queue"]


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ProducerConfigError, match=r"^Producer configuration .* does not exist\.$"):
        read_producer_yaml(tmp_path / "nope.yaml")
    with pytest.raises(ProducerConfigError, match=r"is a directory, not a file\.$"):
        read_producer_yaml(tmp_path)
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ProducerConfigError, match=r"is not a text file"):
        read_producer_yaml(binary)
