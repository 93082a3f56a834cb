"""Finder actor: one delivery in, one small BatchResult out to a writer.

Thin shell over `cxi_async.core.finding` (decode, find, select, map): a bounded asyncio inbox,
CPU work in a worker thread so stats and stop are answered while it runs, and an await
on the writer's inbox, which is where backpressure reaches the finders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from cxi_async.actors.common import debug_init, is_actor_death, is_object_lost, setup_actor_logging
from cxi_async.config import Config
from cxi_async.core.finding import BatchFinder, RefUnavailable
from cxi_async.core.messages import EMPTY, SHARD_GONE, BatchResult, Delivery, writer_index
from cxi_async.core.upstream import ensure_producer_classes, unreadable_item_reason

log = logging.getLogger(__name__)


class Finder:
    """Long-lived peak finder holding the geometry it loaded once in `__init__`."""

    def __init__(self, config: Config, index: int, writers: list[Any]) -> None:
        setup_actor_logging(config)
        self.producer_classes = ensure_producer_classes().source  # before any item is read
        debug_init(config, "finder")
        self.index = index
        self.config = config
        self.writers = writers
        self.batch_finder = BatchFinder(config)
        self.inbox: asyncio.Queue[tuple[Delivery, asyncio.Future]] = asyncio.Queue(
            maxsize=config.processing.finder_inbox
        )
        self.worker: asyncio.Task | None = None
        self.processed = 0
        self.rejected = 0
        self.busy_seconds = 0.0
        self.started = time.monotonic()
        self.zero_copy_warned = False
        self.unreadable_seen = False  # the first unreadable item names the fix
        _preload_torch()

    async def process(self, delivery: Delivery) -> BatchResult:
        """Find peaks of one delivery, hand the result to a writer, and return it.

        Returns once the writer has accepted the result (or the batch was rejected). The
        drainer keeps the returned result so it can re-send it if that writer dies.
        """
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work())
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        await self.inbox.put((delivery, done))
        return await done

    def set_writers(self, writers: list[Any]) -> None:
        """The drainer replaced a writer: send later results to the new one."""
        self.writers = writers

    async def stats(self) -> dict:
        return {
            "index": self.index,
            "inbox": self.inbox.qsize(),
            "processed": self.processed,
            "rejected": self.rejected,
            "producer_classes": self.producer_classes,  # "real" or "stand-in" (upstream.py)
            "busy_fraction": self.busy_seconds / max(time.monotonic() - self.started, 1e-9),
            "node_id": ray.get_runtime_context().get_node_id(),  # placement (multi-node)
        }

    async def ping(self) -> int:
        return self.index

    async def _work(self) -> None:
        while True:
            delivery, done = await self.inbox.get()
            try:
                result = await self._find(delivery)
                if result.rejected is None:
                    await self._hand_to_writer(result)
                done.set_result(result)
            except BaseException as exc:  # keep the worker alive; the drainer decides
                if not done.done():
                    done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _find(self, delivery: Delivery) -> BatchResult:
        t0 = time.perf_counter()
        try:
            item = await delivery.item[0]
        except Exception as exc:
            if is_actor_death(exc):  # the shard died before answering: nothing was taken
                return _unread(delivery, SHARD_GONE)
            self.rejected += 1
            first, self.unreadable_seen = not self.unreadable_seen, True
            reason = unreadable_item_reason(f"{type(exc).__name__}: {exc}", first)
            log.error("delivery %d: %s", delivery.delivery_id, reason if first else exc)
            return _unread(delivery, reason)
        if item is None:  # the shard was empty after all (restarted, or another consumer)
            return _unread(delivery, EMPTY)
        decode_seconds = time.perf_counter() - t0
        self._warn_if_not_zero_copy(item, decode_seconds)
        t1 = time.perf_counter()
        fetch = await _resolve_refs(item)
        if self.config.debug.find_delay_s:
            await asyncio.sleep(self.config.debug.find_delay_s)
        result = await asyncio.to_thread(self.batch_finder.run, item, delivery.delivery_id, fetch)
        del item, fetch
        self.busy_seconds += time.perf_counter() - t1
        result.decode_seconds = decode_seconds
        self.processed += 1
        if result.rejected is not None:
            self.rejected += 1
        return result

    async def _hand_to_writer(self, result: BatchResult) -> None:
        """Await space in the writer's inbox; a dead writer leaves the result to the drainer."""
        writer = self.writers[writer_index(result.delivery_id, len(self.writers))]
        try:
            await writer.submit.remote(result)
        except Exception as exc:
            if not is_actor_death(exc):
                raise
            result.handed_to_writer = False

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


def _unread(delivery: Delivery, reason: str) -> BatchResult:
    return BatchResult(
        delivery_id=delivery.delivery_id,
        batch_id=f"<delivery {delivery.delivery_id} from shard {delivery.shard}>",
        num_events=0,
        kept=[],
        filtered=0,
        image=[],
        num_panels=0,
        rejected=reason,
    )


async def _resolve_refs(item: Any) -> Callable[[Any], Any]:
    """Await the item's refs on the event loop (never a blocking ray.get in an async actor).

    Returns the `fetch` the core calls: a resolved value, or RefUnavailable when the object
    is gone (its owner exited); anything that is not an ObjectRef is passed through.
    """
    resolved: dict[Any, Any] = {}
    for name in ("predictions_ref", "original_image_ref"):
        ref = getattr(item, name, None)
        if isinstance(ref, ray.ObjectRef) and ref not in resolved:
            try:
                resolved[ref] = await ref
            except Exception as exc:
                if not (is_object_lost(exc) or is_actor_death(exc)):
                    raise
                resolved[ref] = RefUnavailable(_first_line(exc))

    def fetch(ref: Any) -> Any:
        value = resolved.get(ref, ref) if isinstance(ref, ray.ObjectRef) else ref
        if isinstance(value, RefUnavailable):
            raise value
        return value

    return fetch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
