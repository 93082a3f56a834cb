"""Supervision: once a second, ask every actor for its stats, publish them, and replace the
actors that are gone.

The stats calls are the liveness check: an actor whose call died is gone. A dead writer's
files that it renamed but never reported are found on disk and listed first
(`core.recovery`); then its unfiled events, per the ledger, are re-submitted once its
replacement exists. A dead finder's delivery is sent again by the routing that was waiting
on it (`Coordinator._find`).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import anyio

from cxi_async.actors.publishing import actor_stats, compose_stats
from cxi_async.core import recovery
from cxi_async.core.messages import FileDone

log = logging.getLogger(__name__)

HEALTH_INTERVAL_S = 1.0


class Supervisor:
    """The coordinator's health tick; it reads the coordinator's units, owns none of them."""

    def __init__(self, coordinator: Any) -> None:
        self.c = coordinator
        self.recovered: set[str] = set()  # files listed from disk, whose FileDone never came
        self.searching = 0  # disk searches running now
        self.reported: set[str] = set()  # files reported while a search ran
        self.listing: set[str] = set()  # files being listed now (the catalog adds them later)
        self.files_recovered = 0  # renamed by a writer that died before reporting them

    async def run(self) -> None:
        while True:
            await anyio.sleep(HEALTH_INTERVAL_S)
            try:
                await self.check()
            except Exception:  # e.g. no node can hold a replacement now: try again later
                log.exception("health check failed; retrying in %.0f s", HEALTH_INTERVAL_S)

    async def check(self) -> None:
        c = self.c
        depth = await c.publisher.watch_q2_full(c.intake.shards)
        if depth is not None:
            c.intake.depth = depth
        finders = self.answering_finders()
        writers = list(enumerate(c.crew.writers))
        finder_stats, writer_stats = await self.actor_stats(finders, writers)
        await c.publisher.publish(compose_stats(c, finder_stats, writer_stats))
        if c.autoscaler is not None and not c.stopping:
            await c.autoscaler.tick(depth, finder_stats, c.group)
            c.credit_maybe_freed()
        for (index, handle), reply in zip(writers, writer_stats, strict=True):
            if reply.get("gone") and c.crew.writers[index] is handle:
                await self.recover_unreported(index)  # before the ledger says what it lost
                lost = c.ledger.writer_lost(index)  # before the new one can be given any
                c.crew.replace_writer(index)
                for delivery_id in lost:
                    c.group.start_soon(c.router.file, delivery_id)
        for (index, handle), reply in zip(finders, finder_stats, strict=True):
            if reply.get("gone") and not (c.stopping and not c.ledger.in_flight):
                self.finder_died(index, handle)

    async def recover_unreported(self, index: int) -> None:
        """List the files dead writer `index` renamed but never reported, as their FileDone
        would have: their events are then filed, and not written again. The disk is read
        in a worker thread."""
        c, out = self.c, self.c.config.output

        def search() -> list[tuple[Path, list[tuple[int, int]]]]:
            dirs = recovery.run_directories(Path(c.output_dir), out.run_from_metadata is not None)
            return recovery.unreported_files(
                dirs,
                out.file_prefix,
                index,
                out.num_writers,
                c.started_at,
                c.run_id,
                c.publisher.catalog.is_listed,
            )

        self.searching += 1
        try:
            files = await asyncio.to_thread(search)
            for path, pairs in files:
                if str(path) in self.reported or str(path) in self.listing:  # FileDone came
                    continue
                self.recovered.add(str(path))
                self.files_recovered += 1
                log.warning(
                    "writer %d died after renaming %s, before reporting it: listed now, "
                    "its %d events are not written again",
                    *(index, path, len(pairs)),
                )
                await c.router.list_file(FileDone(index, str(path), pairs))
        except OSError as exc:  # the directory is away: its events are written again
            log.warning("could not look for writer %d's unreported files: %s", index, exc)
        finally:
            self.searching -= 1
            if not self.searching:
                self.reported.clear()

    def first_report(self, path: str) -> bool:
        """False for the late FileDone of a file already listed from disk."""
        if path in self.recovered:
            self.recovered.discard(path)
            return False
        if self.searching:
            self.reported.add(path)
        return True

    def finder_died(self, index: int, handle: Any) -> None:
        """Replace a dead finder, unless the pool was letting it go anyway."""
        crew, slots = self.c.crew, self.c.slots
        if slots.is_retiring(index):
            crew.remove_finder(index)
            slots.gone(index)
        else:
            crew.replace_finder(index, handle)

    async def stats(self) -> dict:
        """The coordinator's stats with every answering actor's own."""
        writers = list(enumerate(self.c.crew.writers if self.c.crew else []))
        finder_stats, writer_stats = await self.actor_stats(self.answering_finders(), writers)
        return compose_stats(self.c, finder_stats, writer_stats)

    @staticmethod
    async def actor_stats(
        finders: list[tuple[int, Any]], writers: list[tuple[int, Any]]
    ) -> tuple[list[dict], list[dict]]:
        replies = await actor_stats([h for _, h in finders] + [h for _, h in writers])
        return replies[: len(finders)], replies[len(finders) :]

    def answering_finders(self) -> list[tuple[int, Any]]:
        """(index, handle) of the finders past their start (a starting one would hold the
        stats up for seconds)."""
        crew, slots = self.c.crew, self.c.slots
        if crew is None or slots is None:
            return []
        return [
            (i, f)
            for i, f in enumerate(crew.finders)
            if f is not None and (i >= len(slots.state) or slots.state[i] != "starting")
        ]
