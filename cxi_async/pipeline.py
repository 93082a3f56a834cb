"""`Pipeline`: start, watch and stop cxi_async from Python.

    async with await Pipeline.start("config.toml") as pipeline:
        print(await pipeline.stats())
        final = await pipeline.wait()

The driver only holds handles: the coordinator actor (named `cxi_async_coordinator:<queue>` in the
configured namespace, detached: it outlives the driver) owns the finders, writers and the
replay producer and keeps the books. A second driver for the same queue and namespace
attaches to it (``Pipeline.start(..., attach=True)``) instead of starting another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cxi_async.config import Config, load_config
from cxi_async.core.errors import one_line, ray_cause

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """The pipeline could not start (cluster, queue topology, output, geometry)."""


def coordinator_name(config: Config) -> str:
    return f"cxi_async_coordinator:{config.queue.name}"


def output_location(config: Config, started: float | None = None) -> tuple[Path, str]:
    """(directory, run label): `<output_dir>/<run>` when a run is named, else the start time."""
    out = config.output
    if out.run is not None:
        return Path(out.output_dir) / out.run, out.run
    label = time.strftime("%Y%m%dT%H%M%S", time.localtime(started or time.time()))
    return Path(out.output_dir), label


def address_unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing answers at a `host:port` / `ray://host:port` address, or None.

    ray.init retries such an address for minutes; a TCP probe fails in seconds.
    """
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def connect_ray(config: Config) -> None:
    """Attach to `ray.address`, or start a local Ray (the embedded default)."""
    if ray.is_initialized():
        return
    rc = config.ray
    if rc.address is not None:
        reason = address_unreachable(rc.address)
        if reason is not None:
            raise PipelineError(f"nothing answers at ray.address = {rc.address} ({reason})")
    kwargs: dict[str, Any] = {"namespace": rc.namespace, "log_to_driver": True}
    if rc.address is None:
        kwargs["address"] = "local"
        kwargs["include_dashboard"] = False
        if rc.num_cpus is not None:
            kwargs["num_cpus"] = rc.num_cpus
        if rc.object_store_memory_gb is not None:
            kwargs["object_store_memory"] = int(rc.object_store_memory_gb * 2**30)
    else:
        kwargs["address"] = rc.address
    try:
        with _local_ray_ignores_hangup(rc.address is None):
            ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = rc.address or "a local Ray"
        raise PipelineError(
            f"could not connect to Ray at {where} (ray.address): {one_line(exc)}"
        ) from exc


@contextlib.contextmanager
def _local_ray_ignores_hangup(local: bool) -> Iterator[None]:
    """Start a local Ray with SIGHUP ignored, so its processes inherit that.

    A closed terminal sends SIGHUP to the whole process group: the driver then drains and
    stops (``__main__``), but Ray's GCS and raylet, started here in the same group, would die
    at once and take the in-flight batches with them.
    """
    if not local or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


class Pipeline:
    """A running cxi_async pipeline: the coordinator's handle plus the optional replay producer."""

    def __init__(
        self, config: Config, coordinator: Any, output_dir: Path, attached: bool = False
    ) -> None:
        self.config = config
        self.coordinator = coordinator
        self.output_dir = output_dir
        self.attached = attached  # True: another driver started it; this one follows it
        self.replay_result: Any = None  # the replay producer's report, after wait()
        self.final: dict | None = None  # the final stats, once it stopped

    @classmethod
    async def start(
        cls,
        config: Config | str | os.PathLike | None = None,
        overrides: Sequence[str] = (),
        attach: bool = False,
    ) -> Pipeline:
        """Connect to Ray (or start it), create the actors and start draining Q2.

        The coordinator is a detached named actor: it outlives this driver. When one
        is already running for this queue and namespace, ``attach=True`` returns a Pipeline
        that follows it (``attached``), else PipelineError. One that stopped with no driver to
        see it (its driver was killed) is, with ``attach=True``, that end: ``final`` is set, and
        its name freed for the next start; without, it is replaced.
        """
        if not isinstance(config, Config):
            config = load_config(config, overrides)
        connect_ray(config)
        from cxi_async.actors.coordinator import Coordinator

        name = coordinator_name(config)
        running, final = await _running_coordinator(config, keep_stopped=attach)
        if final is not None:  # it stopped and no driver saw it: show that end, free the name
            pipeline = cls(config, running, Path(final["output_dir"]), attached=True)
            await pipeline._cleanup(final)
            return pipeline
        if running is not None:
            if not attach:
                raise PipelineError(
                    f"a cxi_async pipeline for Q2 '{config.queue.name}' is already running in "
                    f"namespace '{config.ray.namespace}' (actor {name}): stop it first "
                    "(python -m cxi_async stop), or run the same command to follow it."
                )
            stats = await running.stats.remote()
            return cls(config, running, Path(stats["output_dir"]), attached=True)
        output_dir, run_label = output_location(config)
        output_dir.mkdir(parents=True, exist_ok=True)
        coordinator = (
            ray.remote(Coordinator)
            .options(
                name=name,
                namespace=config.ray.namespace,
                lifetime="detached",
                num_cpus=0,
                max_restarts=0,
                # beside this process: it writes the lists and status.json into output_dir
                scheduling_strategy=NodeAffinitySchedulingStrategy(
                    ray.get_runtime_context().get_node_id(), soft=True
                ),
            )
            .remote(config, str(output_dir.resolve()), run_label)
        )
        pipeline = cls(config, coordinator, output_dir)
        try:
            started = await coordinator.start.remote()
            if config.replay.enabled:
                await coordinator.start_replay.remote(started["num_shards"])
        except Exception as exc:
            ray.kill(coordinator)
            raise PipelineError(one_line(ray_cause(exc), "last")) from exc
        return pipeline

    async def stats(self) -> dict:
        """Live stats; the final ones once it has stopped (its coordinator may be gone)."""
        if self.final is not None:
            return self.final
        try:
            return await self.coordinator.stats.remote()
        except ray.exceptions.RayActorError:
            if self.final is None:  # not a stop this driver saw finish
                raise
            return self.final

    async def wait(self) -> dict:
        """Until the pipeline stops by itself (idle, max_batches, replay done); final stats."""
        if self.final is not None:  # attached to one that had stopped already
            return self.final
        final = await self._final(self.coordinator.wait_finished.remote())
        if self.config.replay.enabled:
            # `python -m cxi_async stop` elsewhere ends the coordinator once it has the final
            # stats: the replay's report may be gone by then, the run's outcome is not.
            with contextlib.suppress(ray.exceptions.RayActorError):
                self.replay_result = await self.coordinator.replay_result.remote()
        return await self._cleanup(final)

    async def drain_and_stop(self) -> dict:
        """Stop taking from Q2, finish and flush everything in flight, stop the actors."""
        final = await self._final(self.coordinator.drain_and_stop.remote("asked to drain and stop"))
        return await self._cleanup(final)

    async def _final(self, call: Any) -> dict:
        """The final stats a call returns; PipelineError (one sentence) if the coordinator
        ended first (another command stopped it, or it died)."""
        try:
            return await call
        except ray.exceptions.RayActorError as exc:
            raise PipelineError(
                f"the coordinator {coordinator_name(self.config)} ended before this driver had "
                f"its final stats ({one_line(ray_cause(exc), 'last')}); what it renamed is "
                f"listed in {self.output_dir}, with status.json and the run report if it wrote one"
            ) from exc

    async def stop(self) -> dict:
        """Stop now; batches in flight are not written (they are counted as abandoned)."""
        final = await self.coordinator.stop.remote("asked to stop")
        return await self._cleanup(final)

    async def _cleanup(self, final: dict) -> dict:
        """Keep the final stats, then release the coordinator and wait until it has exited
        (once no other caller still waits for them), so its name is free on return."""
        self.final = final
        with contextlib.suppress(Exception):
            await self.coordinator.release.remote()
        await _name_freed(self.config)
        return final

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(ray.exceptions.RayActorError):
            await self.drain_and_stop()


async def _running_coordinator(
    config: Config, keep_stopped: bool = False
) -> tuple[Any, dict | None]:
    """(the coordinator of this queue and namespace, or None; its final stats if it stopped).

    A stopped one is only waiting to exit: no driver saw its end (drivers release the one
    they follow). With ``keep_stopped`` it is returned with its final stats for a follower to
    show; otherwise it is released, and its name is free for a new run on return.
    """
    name = coordinator_name(config)
    try:
        coordinator = ray.get_actor(name, namespace=config.ray.namespace)
    except ValueError:
        return None, None
    try:
        final = await coordinator.finished_stats.remote()
    except ray.exceptions.RayActorError:
        final = {}  # dead: its name is about to be free
    if final is None:
        return coordinator, None
    if final and keep_stopped:
        return coordinator, final
    with contextlib.suppress(Exception):
        await coordinator.release.remote()
    await _name_freed(config)
    return None, None


async def _name_freed(config: Config) -> None:
    """Ray frees a released coordinator's name once it has exited."""
    for _ in range(100):
        try:
            ray.get_actor(coordinator_name(config), namespace=config.ray.namespace)
        except ValueError:
            return
        await asyncio.sleep(0.1)
