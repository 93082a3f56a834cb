"""Finder actor: one Delivery in, one Found | Rejected | Unread back to the coordinator.

Thin shell over `core.finding.BatchFinder` (decode, find, select, map). The coordinator keeps
up to `finder_inbox + 1` calls in flight here: each resolves its item's refs on the event loop
while another computes, and the CPU work runs one batch at a time in a worker thread (an
anyio capacity limiter of 1), so fetching the next batch overlaps computing this one and
stats are answered meanwhile. The finder never talks to a writer: it is free at once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import ray

from cxi_async.actors.common import debug_init, is_actor_death, is_object_lost, setup_actor_logging
from cxi_async.config import Config
from cxi_async.core.errors import one_line
from cxi_async.core.finding import BatchFinder, RefUnavailable
from cxi_async.core.messages import Delivery, FinderResult, Rejected, Unread
from cxi_async.core.upstream import ensure_producer_classes, unreadable_item_reason

log = logging.getLogger(__name__)


class Finder:
    """Long-lived peak finder holding the geometry it loaded once in `__init__`."""

    def __init__(self, config: Config, index: int) -> None:
        setup_actor_logging(config)
        self.producer_classes = ensure_producer_classes().source  # before any item is read
        debug_init(config, "finder")
        self.index = index
        self.config = config
        self.batch_finder = BatchFinder(config)
        self.cpu: anyio.CapacityLimiter | None = None  # made on the actor's event loop
        self.calls = 0  # find() calls in progress (the coordinator bounds them)
        self.processed = 0
        self.rejected = 0
        self.busy_seconds = 0.0
        self.started = time.monotonic()
        self.zero_copy_warned = False
        self.unreadable_seen = False  # the first unreadable item names the fix
        _preload_torch()

    async def find(self, delivery: Delivery) -> FinderResult:
        """Read the delivery's item and find its peaks."""
        if self.cpu is None:
            self.cpu = anyio.CapacityLimiter(1)
        self.calls += 1
        try:
            return await self._find(delivery)
        finally:
            self.calls -= 1

    async def stats(self) -> dict:
        return {
            "index": self.index,
            "inbox": self.calls,
            "processed": self.processed,
            "rejected": self.rejected,
            "producer_classes": self.producer_classes,  # "real" or "stand-in" (upstream.py)
            "busy_fraction": self.busy_seconds / max(time.monotonic() - self.started, 1e-9),
            "busy_seconds": self.busy_seconds,  # cumulative: the pool's busy meter reads it
            "actor_id": ray.get_runtime_context().get_actor_id(),
            "node_id": ray.get_runtime_context().get_node_id(),  # placement (multi-node)
        }

    async def ping(self) -> int:
        return self.index

    async def _find(self, delivery: Delivery) -> FinderResult:
        t0 = time.perf_counter()
        try:
            item = await delivery.item[0]
        except Exception as exc:
            if is_actor_death(exc):  # the shard died before answering: nothing was taken
                return Unread(delivery.delivery_id, "shard gone")
            return self._unreadable(delivery, exc)
        if item is None:  # the shard was empty after all (restarted, or another consumer)
            return Unread(delivery.delivery_id, "empty")
        self._warn_if_not_zero_copy(item, time.perf_counter() - t0)
        fetch = await _resolve_refs(item)
        assert self.cpu is not None
        result = await anyio.to_thread.run_sync(
            self._timed_run, item, delivery.delivery_id, fetch, limiter=self.cpu
        )
        del item, fetch
        self.processed += 1
        if isinstance(result, Rejected):
            self.rejected += 1
        return result

    def _timed_run(self, item: Any, delivery_id: int, fetch: Callable[[Any], Any]) -> Any:
        """The CPU work, timed inside the limiter: busy_fraction counts computing only."""
        t0 = time.perf_counter()
        try:
            if self.config.debug.find_delay_s:  # drill: a slower finder (CPU time, in the limiter)
                time.sleep(self.config.debug.find_delay_s)
            return self.batch_finder.run(item, delivery_id, fetch)
        finally:
            self.busy_seconds += time.perf_counter() - t0

    def _unreadable(self, delivery: Delivery, exc: BaseException) -> Rejected:
        self.rejected += 1
        first, self.unreadable_seen = not self.unreadable_seen, True
        reason = unreadable_item_reason(f"{type(exc).__name__}: {exc}", first)
        log.error("delivery %d: %s", delivery.delivery_id, reason if first else exc)
        batch_id = f"<delivery {delivery.delivery_id} from shard {delivery.shard}>"
        return Rejected(delivery.delivery_id, batch_id, 0, reason)

    def _warn_if_not_zero_copy(self, item: Any, seconds: float) -> None:
        """Ray's zero-copy tensors arrive as views of the object store buffer (`_base` set);
        tensors pickled the default way are rebuilt from their own storage (`_base` None)."""
        if self.zero_copy_warned:
            return
        predictions = getattr(item, "predictions", None)
        if predictions is None or not hasattr(predictions, "is_contiguous"):
            return
        if getattr(predictions, "_base", None) is not None:
            return
        self.zero_copy_warned = True
        log.warning(
            "Q2 items carry inline torch tensors that were pickled, not passed zero-copy "
            "(%.0f MB took %.0f ms to read): set RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1 in the "
            "environment of the Q2 shard actors (ray start, or the producer's runtime_env) "
            "to make this ~100x cheaper.",
            predictions.nbytes / 1e6,
            seconds * 1e3,
        )


def _preload_torch() -> None:
    """Unpickling the first inline tensor imports torch (1-2 s of CPU): do it before the
    pipeline reports itself started, not inside the first batch."""
    with contextlib.suppress(ImportError):
        import torch  # noqa: F401


async def _resolve_refs(item: Any) -> Callable[[Any], Any]:
    """Await the item's refs together on the event loop (never a blocking ray.get in an async
    actor).

    Returns the `fetch` the core calls: a resolved value, or RefUnavailable when the object
    is gone (its owner exited); anything that is not an ObjectRef is passed through.
    """
    refs = {
        ref
        for name in ("predictions_ref", "original_image_ref")
        if isinstance(ref := getattr(item, name, None), ray.ObjectRef)
    }
    resolved: dict[Any, Any] = {}

    async def resolve(ref: Any) -> None:
        try:
            resolved[ref] = await ref
        except Exception as exc:
            if not (is_object_lost(exc) or is_actor_death(exc)):
                raise
            resolved[ref] = RefUnavailable(one_line(exc, named=True))

    async with anyio.create_task_group() as group:
        for ref in refs:
            group.start_soon(resolve, ref)

    def fetch(ref: Any) -> Any:
        value = resolved.get(ref, ref) if isinstance(ref, ray.ObjectRef) else ref
        if isinstance(value, RefUnavailable):
            raise value
        return value

    return fetch
