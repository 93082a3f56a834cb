"""[placement]: its validation, the actor options it gives, and the feasibility check."""

from __future__ import annotations

import pytest
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from cxi_async.actors.placement import (
    Node,
    PlacementError,
    actor_options,
    alive_nodes,
    check_placement,
    finder_bundles,
    selector_matches,
)
from cxi_async.config import Config, ConfigError, dump_toml, load_config

# Two CPU nodes and a GPU node of a small cluster, as alive_nodes(ray.nodes()) gives them.
CPU_A = Node("aa" * 28, "10.0.0.1", {"CPU": 8.0, "cxi_cpu": 8.0}, {"role": "cpu"})
CPU_B = Node(
    "bb" * 28, "10.0.0.2", {"CPU": 8.0, "cxi_cpu": 8.0, "output_disk": 1.0}, {"role": "cpu"}
)
GPU = Node("cc" * 28, "10.0.0.3", {"CPU": 4.0, "GPU": 4.0}, {"role": "gpu"})
CLUSTER = [CPU_A, CPU_B, GPU]


def config(*overrides: str) -> Config:
    return load_config(None, overrides, check_paths=False)


def config_error(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config(*overrides)
    return info.value


def placement_error(cfg: Config, nodes: list[Node] = CLUSTER) -> str:
    with pytest.raises(PlacementError) as info:
        check_placement(cfg, nodes)
    return str(info.value)


# ------------------------------------------------------------------ actor_options


def test_defaults_are_the_plain_cpu_request():
    cfg = Config()
    for role in ("finder", "writer"):
        assert actor_options(cfg, role) == {
            "num_cpus": 1.0,
            "resources": {},
            "scheduling_strategy": "DEFAULT",
        }


def test_finder_options_from_the_config():
    cfg = config(
        "processing.finder_num_cpus=0.5",
        "placement.finder_resources={cxi_cpu = 1}",
        "placement.finder_strategy=SPREAD",
        'placement.finder_label_selector={role = "cpu", "ray.io/market-type" = "!spot"}',
    )
    assert actor_options(cfg, "finder") == {
        "num_cpus": 0.5,
        "resources": {"cxi_cpu": 1.0},
        "scheduling_strategy": "SPREAD",
        "label_selector": {"role": "cpu", "ray.io/market-type": "!spot"},
    }
    assert actor_options(cfg, "writer") == {  # the finder settings leave writers alone
        "num_cpus": 1.0,
        "resources": {},
        "scheduling_strategy": "DEFAULT",
    }


def test_writer_resources_and_labels():
    cfg = config(
        "placement.writer_resources={output_disk = 1}",
        'placement.writer_label_selector={role = "cpu"}',
    )
    options = actor_options(cfg, "writer")
    assert options["resources"] == {"output_disk": 1.0}
    assert options["label_selector"] == {"role": "cpu"}
    assert options["scheduling_strategy"] == "DEFAULT"


def test_writer_node_ip_becomes_hard_node_affinity():
    cfg = config("placement.writer_node_ip=10.0.0.2")
    strategy = actor_options(cfg, "writer", CLUSTER)["scheduling_strategy"]
    assert isinstance(strategy, NodeAffinitySchedulingStrategy)
    assert (strategy.node_id, strategy.soft) == (CPU_B.node_id, False)
    assert actor_options(cfg, "finder", CLUSTER)["scheduling_strategy"] == "DEFAULT"


def test_writer_node_ip_of_no_alive_node():
    cfg = config("placement.writer_node_ip=10.0.0.9")
    with pytest.raises(PlacementError) as info:
        actor_options(cfg, "writer", CLUSTER)
    assert str(info.value) == (
        "placement.writer_node_ip = '10.0.0.9' is not the IP of any alive Ray node (alive: "
        "10.0.0.1, 10.0.0.2, 10.0.0.3): give the IP of the node that owns the output disk, or "
        "leave it unset."
    )


def test_writer_node_ip_shared_by_two_nodes_is_ambiguous():
    twin = Node("dd" * 28, "10.0.0.2", {"CPU": 1.0})
    cfg = config("placement.writer_node_ip=10.0.0.2")
    with pytest.raises(PlacementError, match=r"matches 2 alive Ray nodes .*writer_resources"):
        actor_options(cfg, "writer", [*CLUSTER, twin])


def test_options_are_copies():
    cfg = config("placement.finder_resources={cxi_cpu = 1}")
    actor_options(cfg, "finder")["resources"]["x"] = 1.0
    assert cfg.placement.finder_resources == {"cxi_cpu": 1.0}


def test_unknown_role():
    with pytest.raises(ValueError, match="role must be"):
        actor_options(Config(), "coordinator")  # type: ignore[arg-type]


def test_alive_nodes_reads_ray_nodes():
    raw = [
        {
            "NodeID": "n1",
            "Alive": True,
            "NodeManagerAddress": "10.0.0.1",
            "Resources": {"CPU": 2.0, "node_a": 1.0},
            "Labels": {"role": "a", "ray.io/node-id": "n1"},
        },
        {"NodeID": "n2", "Alive": False, "NodeManagerAddress": "10.0.0.2", "Resources": {}},
        {"NodeID": "n3", "Alive": True, "NodeManagerAddress": "10.0.0.3", "Resources": {}},
    ]
    assert alive_nodes(raw) == [
        Node("n1", "10.0.0.1", {"CPU": 2.0, "node_a": 1.0}, {"role": "a", "ray.io/node-id": "n1"}),
        Node("n3", "10.0.0.3", {}, {}),
    ]


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({}, True),
        ({"role": "cpu"}, True),
        ({"role": "gpu"}, False),
        ({"role": "!gpu"}, True),
        ({"role": "!cpu"}, False),
        ({"role": "in(gpu, cpu)"}, True),
        ({"role": "in(gpu,tpu)"}, False),
        ({"role": "!in(gpu, tpu)"}, True),
        ({"zone": "!east"}, True),  # a negation also matches a node without the label
        ({"zone": "east"}, False),
        ({"role": "cpu", "zone": "east"}, False),  # every key must match
    ],
)
def test_selector_matches(selector, matches):
    assert selector_matches({"role": "cpu"}, selector) is matches


# ------------------------------------------------------------------ check_placement


def test_check_accepts_what_fits():
    check_placement(Config(), CLUSTER)
    check_placement(
        config(
            "processing.num_finders=16",
            "placement.finder_resources={cxi_cpu = 1}",
            "placement.finder_strategy=SPREAD",
            'placement.finder_label_selector={role = "cpu"}',
            "placement.writer_node_ip=10.0.0.2",
            "placement.writer_resources={output_disk = 1}",
        ),
        CLUSTER,
    )


def test_check_refuses_a_resource_no_node_has():
    cfg = config("placement.finder_resources={cxi_cpus = 1}")
    assert placement_error(cfg) == (
        "placement.finder_resources asks each finder for 1 'cxi_cpus' but no alive Ray node has "
        "a resource 'cxi_cpus': start the finders' nodes with "
        "`ray start --resources='{\"cxi_cpus\": N}'`, or remove it from placement.finder_resources."
    )


def test_check_refuses_a_selector_that_matches_no_node():
    cfg = config('placement.writer_label_selector={role = "disk"}')
    message = placement_error(cfg)
    assert message.startswith(
        'placement.writer_label_selector = {role = "disk"} matches no alive Ray node (their '
        'labels: {role = "cpu"}, {role = "cpu"}, {role = "gpu"})'
    )


def test_check_refuses_when_no_single_node_holds_one_actor():
    # cxi_cpu lives on the CPU nodes, the selector only allows the GPU node.
    cfg = config(
        "placement.finder_resources={cxi_cpu = 1}", 'placement.finder_label_selector={role = "gpu"}'
    )
    assert placement_error(cfg) == (
        "no alive Ray node matching placement.finder_label_selector has what one finder needs "
        "(1 CPU and 1 cxi_cpu, from processing.finder_num_cpus and placement.finder_resources): "
        "lower them or add such a node."
    )


def test_check_refuses_more_than_the_nodes_hold():
    cfg = config(
        "processing.num_finders=17",
        "processing.finder_num_cpus=0.5",
        "placement.finder_resources={cxi_cpu = 1}",
    )
    assert placement_error(cfg) == (
        "17 finders x placement.finder_resources 'cxi_cpu' = 1 need 17 cxi_cpu but the nodes "
        "that can hold a finder have 16: lower the count or the amount, or add nodes."
    )


def test_check_counts_only_the_pinned_writer_node():
    cfg = config(
        "output.num_writers=9",
        "processing.credits=9",
        "placement.writer_node_ip=10.0.0.1",
    )
    assert placement_error(cfg) == (
        "9 writers x processing.writer_num_cpus = 1 need 9 CPU but the nodes at 10.0.0.1 that "
        "can hold a writer have 8: lower the count or the amount, or add nodes."
    )


def test_check_resolves_the_writer_node_ip():
    assert "is not the IP of any alive Ray node" in placement_error(
        config("placement.writer_node_ip=10.9.9.9")
    )


# ------------------------------------------------------------------ configuration


def test_defaults():
    pl = Config().placement
    assert (pl.finder_resources, pl.writer_resources) == ({}, {})
    assert pl.finder_strategy == "DEFAULT"
    assert pl.writer_node_ip is None
    assert (pl.finder_label_selector, pl.writer_label_selector) == ({}, {})


def test_read_from_a_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        "[placement]\n"
        "finder_resources = {cxi_cpu = 0.5}\n"
        'finder_strategy = "SPREAD"\n'
        'writer_node_ip = "10.0.0.2"\n'
        'writer_label_selector = {"ray.io/node-id" = "abc", disk = "in(nvme, ssd)"}\n'
    )
    pl = load_config(path, check_paths=False).placement
    assert pl.finder_resources == {"cxi_cpu": 0.5}
    assert pl.finder_strategy == "SPREAD"
    assert pl.writer_node_ip == "10.0.0.2"
    assert pl.writer_label_selector == {"ray.io/node-id": "abc", "disk": "in(nvme, ssd)"}


def test_round_trip_with_keys_that_need_quotes(tmp_path):
    cfg = config(
        "placement.finder_resources={cxi_cpu = 1, 'accelerator_type:X' = 0.5}",
        'placement.writer_label_selector={"ray.io/node-id" = "abc"}',
        "placement.writer_node_ip=::1",
    )
    path = tmp_path / "dump.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path, check_paths=False) == cfg


def test_bad_strategy_names_the_key_and_the_choices():
    err = config_error("placement.finder_strategy=spread")
    assert err.key == "placement.finder_strategy"
    assert str(err) == (
        'placement.finder_strategy = "spread" is invalid: expected one of "DEFAULT", "SPREAD" '
        "(from --set placement.finder_strategy=spread)."
    )


def test_negative_resource_names_the_key():
    err = config_error("placement.writer_resources={output_disk = -1}")
    assert err.key == "placement.writer_resources"
    assert str(err) == (
        "placement.writer_resources = {output_disk = -1} is invalid: expected a table "
        "{name = value, ...} whose values are each a number >= 0 "
        "(from --set placement.writer_resources={output_disk = -1})."
    )


def test_resources_must_be_a_table():
    err = config_error("placement.finder_resources=2")
    assert err.key == "placement.finder_resources"
    assert "expected a table" in str(err)


def test_cpu_is_not_a_custom_resource():
    err = config_error("placement.finder_resources={CPU = 2}")
    assert err.key == "placement.finder_resources"
    assert str(err) == (
        "placement.finder_resources = {CPU = 2.0} names Ray's built-in resource 'CPU': set "
        "processing.finder_num_cpus for CPUs; placement.finder_resources is for custom "
        "resources, the names given to `ray start --resources`."
    )


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("writer_resources={'' = 1}", "empty resource"),
        ("finder_resources={x = 0.00001}", "0.0001"),
        ("finder_label_selector={role = 'in(a,'}", "invalid selector"),
        ("writer_label_selector={'-bad' = 'x'}", "invalid label name"),
        ("finder_label_selector={role = ''}", "invalid selector"),
        ("writer_node_ip=disk-node", "is not an IP address"),
        ("writer_node_ip=''", "non-empty string"),
    ],
)
def test_invalid_placement_names_the_key(setting, words):
    err = config_error(f"placement.{setting}")
    assert err.key == "placement." + setting.split("=")[0]
    assert words in str(err)
    assert "\n" not in str(err)


# ------------------------------------------------------------------ finder placement group


def test_finder_bundles_hold_what_one_finder_asks_for():
    cfg = config(
        "processing.num_finders=3",
        "processing.finder_num_cpus=0.5",
        "placement.finder_resources={cxi_cpu = 1, unused = 0}",
    )
    assert finder_bundles(cfg) == [{"CPU": 0.5, "cxi_cpu": 1.0}] * 3
    cfg = config("processing.finder_num_cpus=0", "placement.finder_resources={cxi_cpu = 2}")
    assert finder_bundles(cfg) == [{"cxi_cpu": 2.0}] * 2


def test_a_finder_in_a_placement_group_runs_in_its_bundle():
    group = object()  # stands for a ray PlacementGroup; the strategy only carries it
    cfg = config("placement.finder_placement_group=STRICT_SPREAD")
    options = actor_options(cfg, "finder", placement_group=group, bundle_index=1)
    strategy = options["scheduling_strategy"]
    assert isinstance(strategy, PlacementGroupSchedulingStrategy)
    assert strategy.placement_group is group
    assert strategy.placement_group_bundle_index == 1
    assert options["num_cpus"] == 1.0
    assert actor_options(cfg, "finder")["scheduling_strategy"] == "DEFAULT"


def test_strict_spread_needs_a_node_per_finder():
    cfg = config(
        "placement.finder_placement_group=STRICT_SPREAD",
        "processing.num_finders=3",
        "placement.finder_resources={cxi_cpu = 1}",
    )
    assert placement_error(cfg) == (
        'placement.finder_placement_group = "STRICT_SPREAD" puts each of the 3 finders on its '
        "own node, but only 2 alive Ray node(s) can hold a finder (1 CPU and 1 cxi_cpu): add "
        "nodes, lower processing.num_finders, or use SPREAD."
    )
    check_placement(config("placement.finder_placement_group=STRICT_SPREAD"), CLUSTER)
    check_placement(
        config(
            "placement.finder_placement_group=SPREAD",
            "processing.num_finders=3",
            "placement.finder_resources={cxi_cpu = 1}",
        ),
        CLUSTER,
    )


def test_strict_pack_needs_one_node_for_all_finders():
    cfg = config(
        "placement.finder_placement_group=STRICT_PACK",
        "processing.num_finders=10",
        "processing.finder_num_cpus=1",
    )
    assert placement_error(cfg) == (
        'placement.finder_placement_group = "STRICT_PACK" puts all 10 finders on one node, '
        "but no alive Ray node has 10 CPU: lower the amounts or use PACK."
    )
    check_placement(
        config("placement.finder_placement_group=PACK", "processing.num_finders=10"), CLUSTER
    )


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["placement.finder_strategy=SPREAD"], "placement.finder_strategy", "both place"),
        (
            ["placement.finder_label_selector={role = 'cpu'}"],
            "placement.finder_label_selector",
            "cannot be used with",
        ),
        (["processing.finder_num_cpus=0"], "placement.finder_placement_group", "reserve"),
    ],
)
def test_a_placement_group_excludes_other_finder_placement(overrides, key, words):
    err = config_error("placement.finder_placement_group=SPREAD", *overrides)
    assert err.key == key
    assert words in str(err) and 'placement.finder_placement_group = "SPREAD"' in str(err)
