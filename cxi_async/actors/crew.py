"""The crew: the finder and writer actors of one run, made, watched and replaced.

An actor that dies, while starting or later, is replaced by a new one at the same index. What
it held is not this unit's concern: the coordinator asks its ledger (a writer) or re-sends
the delivery (a finder). A start that cannot succeed says which actor, on which node, and why.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from cxi_async.actors.common import awaited, is_actor_death, start_failure
from cxi_async.actors.placement import actor_options, alive_nodes, check_placement, finder_bundles
from cxi_async.config import Config
from cxi_async.core.geometry import SlabLayout

log = logging.getLogger(__name__)

START_ATTEMPTS = 3  # an actor slot whose actor dies this many times while starting fails the start
START_TIMEOUT_S = 120.0


class Crew:
    """Finders and writers, by index; `replacements` counts the new ones per role."""

    def __init__(
        self,
        config: Config,
        coordinator: Any,
        layout: SlabLayout | None,
        output_dir: str,
        run_label: str,
        run_id: str,
    ) -> None:
        self.config = config
        self.coordinator = coordinator
        self.layout = layout
        self.output_dir = output_dir
        self.run_label = run_label
        self.run_id = run_id  # written in every file: which delivery ids of which run
        self.finders: list[Any] = []  # by index; None where the pool let a finder go
        self.writers: list[Any] = []
        self.finder_group: Any = None  # placement group of the finders, if configured
        self.replacements: collections.Counter[str] = collections.Counter()

    async def start(self) -> None:
        """Check the cluster can hold the crew, make it, and wait until every actor answers.

        One that dies while starting (in ``__init__``) is replaced, up to START_ATTEMPTS times.
        """
        cfg = self.config
        _check_cpus(cfg)
        self.finder_group = await _reserve_finder_group(cfg)
        self.writers = [self._new_writer(i) for i in range(cfg.output.num_writers)]
        self.finders = [self._new_finder(i) for i in range(cfg.processing.num_finders)]
        tries: collections.Counter[tuple[str, int]] = collections.Counter()
        while True:
            slots = [("writer", i, a) for i, a in enumerate(self.writers)]
            slots += [("finder", i, a) for i, a in enumerate(self.finders)]
            replies = await _placed([a for _, _, a in slots])
            dead = [(r, i, e) for (r, i, _), e in zip(slots, replies, strict=True) if e is not None]
            if not dead:
                return
            for role, index, exc in dead:
                if not is_actor_death(exc):
                    raise exc
                tries[role, index] += 1
                if tries[role, index] >= START_ATTEMPTS:
                    raise RuntimeError(start_failure(role, index, tries[role, index], str(exc)))
                log.warning(
                    "%s; starting another", start_failure(role, index, 1, str(exc)).rstrip(".")
                )
                self._replace(role, index)

    @property
    def live_finders(self) -> list[Any]:
        return [f for f in self.finders if f is not None]

    def start_finder(self, index: int) -> None:
        """A new finder at `index` (the pool grew); `placed` says when it answers."""
        while len(self.finders) <= index:
            self.finders.append(None)
        self.finders[index] = self._new_finder(index)

    async def placed(self, index: int) -> None:
        """Returns once finder `index` answers; raises if it died or Ray cannot place it."""
        (error,) = await _placed([self.finders[index]])
        if error is not None:
            raise error

    def remove_finder(self, index: int) -> None:
        """The pool let finder `index` go (idle, retired): kill it."""
        finder, self.finders[index] = self.finders[index], None
        if finder is not None:
            ray.kill(finder)

    def replace_writer(self, index: int) -> None:
        log.warning("writer %d is dead; starting a new one and re-sending what it held", index)
        self._replace("writer", index)

    def replace_finder(self, index: int, dead: Any) -> None:
        """Replace finder `index` if it is still the `dead` handle (one replacement per death)."""
        if self.finders[index] is dead:
            log.warning("finder %d is dead; starting a new one", index)
            self._replace("finder", index)

    def kill(self) -> None:
        for actor in [*self.live_finders, *self.writers]:
            ray.kill(actor)
        if self.finder_group is not None:
            remove_placement_group(self.finder_group)

    def _replace(self, role: str, index: int) -> None:
        self.replacements[role] += 1
        if role == "writer":
            self.writers[index] = self._new_writer(index)
        else:
            self.finders[index] = self._new_finder(index)

    def _new_finder(self, index: int) -> Any:
        from cxi_async.actors.finder import Finder

        options = actor_options(
            self.config, "finder", placement_group=self.finder_group, bundle_index=index
        )
        return ray.remote(Finder).options(**options, max_restarts=0).remote(self.config, index)

    def _new_writer(self, index: int) -> Any:
        from cxi_async.actors.writer import Writer

        options = actor_options(self.config, "writer", alive_nodes(ray.nodes()))
        return (
            ray.remote(Writer)
            .options(**options, max_restarts=0)
            .remote(
                self.config,
                index,
                self.coordinator,
                self.layout,
                self.output_dir,
                self.run_label,
                self.run_id,
            )
        )


def _check_cpus(cfg: Config) -> None:
    """Refuse actors that could never be scheduled, rather than wait for them forever."""
    p = cfg.processing
    wanted = p.num_finders * p.finder_num_cpus + cfg.output.num_writers * p.writer_num_cpus
    have = ray.cluster_resources().get("CPU", 0.0)
    if wanted > have:
        raise RuntimeError(
            f"{p.num_finders} finders x processing.finder_num_cpus = {p.finder_num_cpus:g} and "
            f"{cfg.output.num_writers} writers x processing.writer_num_cpus = "
            f"{p.writer_num_cpus:g} need {wanted:g} CPUs but the Ray cluster has {have:g}: "
            "lower them (fractions are fine) or add nodes."
        )
    check_placement(cfg, alive_nodes(ray.nodes()))  # custom resources, labels, writer node


async def _reserve_finder_group(cfg: Config, timeout: float = START_TIMEOUT_S) -> Any:
    """The finders' placement group (one bundle each), ready; None without one."""
    strategy = cfg.placement.finder_placement_group
    if strategy == "none":
        return None
    bundles = finder_bundles(cfg)
    group = placement_group(bundles, strategy=strategy)
    try:
        await asyncio.wait_for(awaited(group.ready()), timeout)
    except asyncio.TimeoutError:
        remove_placement_group(group)
        raise RuntimeError(
            f'Ray could not reserve placement.finder_placement_group = "{strategy}" '
            f"({len(bundles)} bundles of {bundles[0]}) within {timeout:g} s: other jobs hold "
            "the resources, or the nodes cannot hold that strategy."
        ) from None
    log.info("reserved a %s placement group of %d finder bundles", strategy, len(bundles))
    return group


async def _placed(
    actors: list[Any], timeout: float = START_TIMEOUT_S
) -> list[BaseException | None]:
    """Wait until every new actor answers or fails (its error, else None); a clear sentence
    if Ray cannot place them."""
    try:
        replies = await asyncio.wait_for(
            asyncio.gather(*(awaited(a.ping.remote()) for a in actors), return_exceptions=True),
            timeout,
        )
        return [r if isinstance(r, BaseException) else None for r in replies]
    except asyncio.TimeoutError:
        raise RuntimeError(
            f"Ray did not start the finders and writers within {timeout:g} s: the cluster has "
            f"{ray.available_resources().get('CPU', 0.0):g} CPUs free; check "
            "processing.finder_num_cpus / writer_num_cpus and the scheduling options."
        ) from None
