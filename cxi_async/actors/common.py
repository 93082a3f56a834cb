"""What every actor shares: logging set-up and telling Ray's failure kinds apart."""

from __future__ import annotations

import contextlib
import logging
import warnings

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
