"""What every actor shares: logging set-up and telling Ray's failure kinds apart."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import warnings
from typing import Any

import anyio
import ray.exceptions

from cxi_async.config import Config

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def quiet_zero_copy_warnings() -> None:
    """Silence Ray's and torch's warnings about zero-copy tensors in this process.

    They say a tensor over a read-only buffer must not be written; cxi_async never writes
    logits or images (they stay read-only views by design), so every run would otherwise
    print them from each producer, shard and finder process.
    """
    with contextlib.suppress(ImportError):  # it adds its own filter when imported: go first
        import ray._private.tensor_serialization_utils  # noqa: F401
    warnings.filterwarnings("ignore", message="Zero-copy tensor serialization is enabled")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def setup_actor_logging(config: Config) -> None:
    """Actors log to their worker's stderr, which Ray forwards to the driver."""
    quiet_zero_copy_warnings()
    root = logging.getLogger()
    root.setLevel(config.system.log_level)
    if not any(getattr(h, "_cxi_async", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._cxi_async = True  # type: ignore[attr-defined]
        root.addHandler(handler)


async def awaited(ref: Any) -> Any:
    """A coroutine of an ObjectRef, for asyncio.wait_for / gather, which want coroutines."""
    return await ref


class Wakeup:
    """Wake every task waiting for a change (a free slot, a free credit).

    A waiter takes `event` *before* it checks its condition and waits on that event; `notify`
    sets it and starts a new one. So a change between the check and the wait still wakes it,
    and no event is set twice.
    """

    def __init__(self) -> None:
        self.event = anyio.Event()

    def notify(self) -> None:
        event, self.event = self.event, anyio.Event()
        event.set()


def is_actor_death(exc: BaseException) -> bool:
    """The actor we called is gone (killed, crashed, its node died)."""
    return isinstance(exc, ray.exceptions.RayActorError)


def is_object_lost(exc: BaseException) -> bool:
    """An object we need is gone from the object store (e.g. its owner exited)."""
    return isinstance(
        exc,
        ray.exceptions.ObjectLostError
        | ray.exceptions.OwnerDiedError
        | ray.exceptions.ObjectFetchTimedOutError,
    )


def debug_init(config: Config, role: str) -> None:
    """The start-up fault drills: ``debug.init_delay_s`` and ``debug.fail_init``."""
    if config.debug.init_delay_s:
        time.sleep(config.debug.init_delay_s)
    if config.debug.fail_init == role:
        raise RuntimeError(f"debug.fail_init = {role!r}: this {role} refuses to start")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_IP = re.compile(r"\bip[=:]\s*([^\s,)]+)")


def start_failure(role: str, index: int, tries: int, death: str) -> str:
    """One sentence from the text of the RayActorError of an actor that died while starting:
    which actor, on which node (the ``ip`` Ray reports) and why (the exception its
    ``__init__`` raised, or Ray's reason such as a ``ray.kill``)."""
    text = _ANSI.sub("", death)
    found = _IP.search(text)
    node = f"on node {found.group(1)}" if found else "on an unknown node"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    why = next((line for line in lines if line.startswith("The actor is dead because")), None)
    if why is None and lines and "creation task" in lines[0]:
        why = lines[-1]  # the exception __init__ raised
    if why is None:
        why = lines[0] if lines else "no reason given"
    times = "once" if tries == 1 else f"{tries} times"
    return f"{role} {index} died while starting {node} ({times}): {why.rstrip('.')}."
