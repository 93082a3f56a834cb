"""Ray scheduling options of the finders and writers, as a function of the configuration.

`actor_options` turns the ``[placement]`` section into the keyword arguments of
``ray.remote(...).options()``, and `check_placement` refuses, before any actor is created, a
placement that no alive node could ever satisfy (Ray would otherwise keep the actor pending
forever). Both are pure: the cluster's nodes come in as a list (``alive_nodes(ray.nodes())`` in
the coordinator, literal `Node` values in tests). Ray is only imported to build a node-affinity
strategy, so this module stays cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cxi_async.config import Config

__all__ = [
    "Node",
    "PlacementError",
    "actor_options",
    "alive_nodes",
    "check_placement",
    "finder_bundles",
    "selector_matches",
    "writer_node",
]

Role = Literal["finder", "writer"]
_EPS = 1e-9


class PlacementError(RuntimeError):
    """The cluster cannot place the finders or writers as configured (one sentence)."""


@dataclass(frozen=True)
class Node:
    """What placement needs to know of one alive Ray node."""

    node_id: str
    ip: str
    resources: Mapping[str, float] = field(default_factory=dict)  # totals, not what is free
    labels: Mapping[str, str] = field(default_factory=dict)


def alive_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[Node]:
    """The alive entries of ``ray.nodes()`` (dead nodes stay in that list)."""
    return [
        Node(
            node_id=n["NodeID"],
            ip=n.get("NodeManagerAddress", ""),
            resources=dict(n.get("Resources") or {}),
            labels=dict(n.get("Labels") or {}),
        )
        for n in nodes
        if n.get("Alive", n.get("alive", False))
    ]


def finder_bundles(config: Config) -> list[dict[str, float]]:
    """One placement-group bundle per finder: what one finder asks for (zeros left out)."""
    need = {"CPU": config.processing.finder_num_cpus, **config.placement.finder_resources}
    bundle = {r: float(a) for r, a in need.items() if a > 0}
    return [dict(bundle) for _ in range(config.processing.num_finders)]


def actor_options(
    config: Config,
    role: Role,
    nodes: Sequence[Node] = (),
    *,
    placement_group: Any = None,
    bundle_index: int = -1,
) -> dict[str, Any]:
    """The ``.options(...)`` kwargs of a finder or writer: num_cpus, resources, strategy, labels.

    ``nodes`` (the alive nodes) is only read to resolve ``placement.writer_node_ip`` to a node
    id, which is what Ray's node affinity takes. A finder given ``placement_group`` (made from
    `finder_bundles`) runs in its bundle ``bundle_index``.
    """
    pl, p = config.placement, config.processing
    if role == "finder":
        strategy: Any = pl.finder_strategy
        if placement_group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            strategy = PlacementGroupSchedulingStrategy(
                placement_group, placement_group_bundle_index=bundle_index
            )
        options: dict[str, Any] = {
            "num_cpus": p.finder_num_cpus,
            "resources": dict(pl.finder_resources),
            "scheduling_strategy": strategy,
        }
        selector = pl.finder_label_selector
    elif role == "writer":
        strategy = "DEFAULT"
        if pl.writer_node_ip is not None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # soft=False: a writer elsewhere would write to the wrong disk; better to fail.
            strategy = NodeAffinitySchedulingStrategy(
                writer_node(config, nodes).node_id, soft=False
            )
        options = {
            "num_cpus": p.writer_num_cpus,
            "resources": dict(pl.writer_resources),
            "scheduling_strategy": strategy,
        }
        selector = pl.writer_label_selector
    else:
        raise ValueError(f"role must be 'finder' or 'writer', not {role!r}")
    if selector:  # only when set: older Rays do not know the option
        options["label_selector"] = dict(selector)
    return options


def writer_node(config: Config, nodes: Sequence[Node]) -> Node:
    """The one alive node whose IP is ``placement.writer_node_ip``."""
    ip = config.placement.writer_node_ip
    found = [n for n in nodes if n.ip == ip]
    if not found:
        alive = ", ".join(sorted({n.ip for n in nodes})) or "none"
        raise PlacementError(
            f"placement.writer_node_ip = {ip!r} is not the IP of any alive Ray node (alive: "
            f"{alive}): give the IP of the node that owns the output disk, or leave it unset."
        )
    if len(found) > 1:
        raise PlacementError(
            f"placement.writer_node_ip = {ip!r} matches {len(found)} alive Ray nodes (several "
            "raylets on one host), so it cannot name one: give that node a custom resource "
            "(`ray start --resources='{\"output_disk\": 1}'`) and set placement.writer_resources."
        )
    return found[0]


def selector_matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Ray's label-selector semantics: "v", "!v", "in(a, b)", "!in(a, b)" on every key.

    A negated condition also matches a node without the label, as in Kubernetes and Ray.
    """
    for key, expr in selector.items():
        negate = expr.startswith("!")
        body = expr[1:] if negate else expr
        if body.endswith(")"):
            values = {v.strip() for v in body[body.index("(") + 1 : -1].split(",")}
        else:
            values = {body}
        if (labels.get(key) in values) == negate:
            return False
    return True


def check_placement(config: Config, nodes: Sequence[Node]) -> None:
    """Refuse finders or writers that no alive node could hold, rather than wait forever.

    Checks, per role: every custom resource exists on some node; the label selector (and the
    writer's node IP) leave some node; one of those nodes has what one actor needs; and all of
    them together have what all the actors of the role need. Other jobs' actors are not
    counted: that is waited for, not refused.
    """
    counts: dict[Role, int] = {
        "finder": config.processing.num_finders,
        "writer": config.output.num_writers,
    }
    for role, count in counts.items():
        options = actor_options(config, role, nodes)  # also resolves writer_node_ip
        key = f"placement.{role}_resources"
        for name, amount in options["resources"].items():
            if amount > 0 and not any(n.resources.get(name, 0) > 0 for n in nodes):
                raise PlacementError(
                    f"{key} asks each {role} for {amount:g} {name!r} but no alive Ray node has a "
                    f"resource {name!r}: start the {role}s' nodes with `ray start "
                    f"--resources='{{\"{name}\": N}}'`, or remove it from {key}."
                )
        candidates, at = list(nodes), ""
        pinned = getattr(options["scheduling_strategy"], "node_id", None)
        if pinned is not None:
            candidates = [n for n in nodes if n.node_id == pinned]
            at = f" at {config.placement.writer_node_ip}"
        where = at
        selector = options.get("label_selector", {})
        if selector:
            candidates = [n for n in candidates if selector_matches(n.labels, selector)]
            where += f" matching placement.{role}_label_selector"
            if not candidates:
                raise PlacementError(
                    f"placement.{role}_label_selector = {_table(selector)} matches no alive Ray "
                    f"node{at} (their labels: {_labels(nodes)}): start nodes with `ray start "
                    "--labels` or change the selector."
                )
        need = {"CPU": options["num_cpus"], **options["resources"]}
        need = {r: a for r, a in need.items() if a > 0}
        fit = [
            n for n in candidates if all(n.resources.get(r, 0) + _EPS >= a for r, a in need.items())
        ]
        if not fit:
            raise PlacementError(
                f"no alive Ray node{where} has what one {role} needs ({_amounts(need)}, from "
                f"processing.{role}_num_cpus and {key}): lower them or add such a node."
            )
        if role == "finder":
            _check_group(config, need, fit, where)
        for r, a in need.items():
            have = sum(n.resources.get(r, 0) for n in fit)
            if count * a > have + _EPS:
                setting = f"processing.{role}_num_cpus" if r == "CPU" else f"{key} {r!r}"
                raise PlacementError(
                    f"{count} {role}s x {setting} = {a:g} need {count * a:g} {r} but the nodes"
                    f"{where} that can hold a {role} have {have:g}: lower the count or the "
                    "amount, or add nodes."
                )


def _check_group(
    config: Config, need: Mapping[str, float], fit: Sequence[Node], where: str
) -> None:
    """The strict placement-group strategies need enough nodes, or one big enough node."""
    strategy, count = config.placement.finder_placement_group, config.processing.num_finders
    key = "placement.finder_placement_group"
    if strategy == "STRICT_SPREAD" and len(fit) < count:
        raise PlacementError(
            f'{key} = "STRICT_SPREAD" puts each of the {count} finders on its own node, but '
            f"only {len(fit)} alive Ray node(s){where} can hold a finder ({_amounts(need)}): "
            "add nodes, lower processing.num_finders, or use SPREAD."
        )
    if strategy == "STRICT_PACK" and not any(
        all(n.resources.get(r, 0) + _EPS >= count * a for r, a in need.items()) for n in fit
    ):
        total = {r: count * a for r, a in need.items()}
        raise PlacementError(
            f'{key} = "STRICT_PACK" puts all {count} finders on one node, but no alive Ray '
            f"node{where} has {_amounts(total)}: lower the amounts or use PACK."
        )


def _table(d: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f'{k} = "{v}"' for k, v in d.items()) + "}"


def _amounts(need: Mapping[str, float]) -> str:
    return " and ".join(f"{a:g} {r}" for r, a in need.items()) or "nothing"


def _labels(nodes: Sequence[Node]) -> str:
    custom = [
        _table({k: v for k, v in n.labels.items() if not k.startswith("ray.io/")}) for n in nodes
    ]
    return ", ".join(custom) or "no nodes"
