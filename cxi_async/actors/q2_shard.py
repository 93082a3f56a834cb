"""Q2 shard actors: the same names and method contract as peaknet-pipeline-ray's RayQueue.

Either side may start first: the producer creates-or-connects by name, and so does cxi_async.
When cxi_async creates a shard it sets RAY_ENABLE_ZERO_COPY_TORCH_TENSORS in the shard's
worker, so inline logits leave the shard as a zero-copy buffer instead of a pickled tensor.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from cxi_async.actors.common import quiet_zero_copy_warnings
from cxi_async.core import q2
from cxi_async.core.q2 import shard_names
from cxi_async.core.upstream import ensure_producer_classes

log = logging.getLogger(__name__)

ZERO_COPY_ENV = {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}


class FifoShard(q2.FifoShard):
    """The shard cxi_async creates: q2.FifoShard, without the zero-copy warnings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        quiet_zero_copy_warnings()
        ensure_producer_classes()  # put(item) unpickles the item here
        super().__init__(*args, **kwargs)


RemoteQ2Shard = ray.remote(num_cpus=0)(FifoShard)


class Q2TopologyError(RuntimeError):
    """Q2 is not where, or not shaped as, the configuration says."""


def find_shard_indices(queue_name: str, namespace: str) -> list[int]:
    """Indices of the shards `<queue_name>_shard_<i>` that exist now in `namespace`."""
    prefix = f"{queue_name}_shard_"
    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name, ns = entry["name"], entry["namespace"]
        if ns == namespace and name.startswith(prefix) and name[len(prefix) :].isdigit():
            found.append(int(name[len(prefix) :]))
    return sorted(found)


def namespaces_holding(queue_name: str) -> list[str]:
    """Namespaces in which some shard of `queue_name` exists (to explain a wrong namespace)."""
    prefix = f"{queue_name}_shard_"
    return sorted(
        {
            e["namespace"]
            for e in ray.util.list_named_actors(all_namespaces=True)
            if e["name"].startswith(prefix)
        }
    )


def wrong_namespace_hint(queue_name: str, namespace: str) -> str | None:
    """When Q2 has no shard in `namespace` but has some elsewhere, say so in one sentence."""
    elsewhere = [ns for ns in namespaces_holding(queue_name) if ns != namespace]
    if not elsewhere:
        return None
    return (
        f"Q2 '{queue_name}' has no shards in namespace '{namespace}' but has some in "
        f"{', '.join(repr(n) for n in elsewhere)}: set ray.namespace to the producer's namespace."
    )


def check_topology(queue_name: str, namespace: str, num_shards: int) -> None:
    """Refuse a shard count that disagrees with shards that already exist.

    With no shard in the namespace yet, cxi_async creates them (it may start first); a queue
    of that name in another namespace is then worth a warning, since it often means a typo.
    """
    existing = find_shard_indices(queue_name, namespace)
    if not existing:
        hint = wrong_namespace_hint(queue_name, namespace)
        if hint:
            log.warning("%s (creating the shards in '%s' and waiting)", hint, namespace)
        return
    if existing != list(range(len(existing))) or len(existing) != num_shards:
        raise Q2TopologyError(
            f"Q2 '{queue_name}' in namespace '{namespace}' has shards {existing} but "
            f"queue.num_shards = {num_shards}: set it to the producer's runtime.queue_num_shards "
            f'({len(existing)}) or to "auto".'
        )


def connect_shards(
    queue_name: str,
    namespace: str,
    num_shards: int,
    maxsize_per_shard: int,
    zero_copy: bool = True,
) -> list[Any]:
    """Create-or-connect every shard, as the producer does; returns their handles."""
    return [
        _get_or_create(name, namespace, maxsize_per_shard, zero_copy)
        for name in shard_names(queue_name, num_shards)
    ]


def _get_or_create(name: str, namespace: str, maxsize: int, zero_copy: bool) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        pass
    try:
        handle = RemoteQ2Shard.options(
            name=name,
            namespace=namespace,
            lifetime="detached",
            runtime_env={"env_vars": ZERO_COPY_ENV} if zero_copy else None,
        ).remote(maxsize=maxsize)
        log.info("created Q2 shard %s in namespace %s (maxsize %d)", name, namespace, maxsize)
        return handle
    except ValueError:  # the producer created it between our two calls
        return ray.get_actor(name, namespace=namespace)
