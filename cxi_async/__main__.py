"""Command line: `python -m cxi_async [run] config.toml [--set key=value ...]`.

Other commands (`check`, `status`, `health`, `stop`) live in `cxi_async.commands`; this module
parses arguments, sets up logging, runs the pipeline with a live progress line, stops it gracefully
on Ctrl+C / SIGTERM / SIGHUP (a second one aborts), and prints a summary table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from cxi_async import __version__
from cxi_async.commands import add_config_arguments
from cxi_async.config import Config, ConfigError, load_config
from cxi_async.core.summary import format_progress, format_summary

log = logging.getLogger("cxi_async")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_START = 3
EXIT_ABORTED = 130

COMMANDS = ("run", "check", "status", "health", "stop")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cxi_async",
        description=(
            "Drain PeakNet results from the sharded Ray queue Q2, find Bragg peaks and write "
            "CXI files CrystFEL indexes as they are. With the top-level config.toml it starts "
            "a local Ray and replays synthetic ePix10k2M batches."
        ),
        epilog=(
            "commands: run (default) | check [--pipeline-config pipeline.yaml] config.toml | "
            "status config.toml | health config.toml | stop config.toml | "
            "plot <report.json | output dir>. "
            "`python -m cxi_async <command> --help` for each."
        ),
    )
    parser.add_argument("--version", action="version", version=f"cxi_async {__version__}")
    add_config_arguments(parser)
    return parser


def setup_logging(config: Config) -> None:
    """Driver logging per system.log_level / log_file; actors log through Ray to here."""
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(config.system.log_level)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.system.log_file:
        handlers.append(logging.FileHandler(config.system.log_file))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plot":  # no config: it reads a finished run's report
        from cxi_async.core import plots

        return plots.main(argv[1:])
    if argv and argv[0] in COMMANDS and argv[0] != "run":
        from cxi_async import commands

        return commands.main(argv[0], argv[1:])  # check, status, health, stop
    if argv and argv[0] == "run":
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"cxi_async: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(config)
    try:
        return asyncio.run(run(config))
    except KeyboardInterrupt:
        return EXIT_ABORTED


async def run(config: Config) -> int:
    """Start, show progress, stop on a signal or by itself, print the summary."""
    from cxi_async.pipeline import Pipeline, PipelineError

    t0 = time.monotonic()
    try:
        pipeline = await Pipeline.start(config, attach=True)
    except PipelineError as exc:
        print(f"cxi_async: {exc}", file=sys.stderr)
        return EXIT_START
    if pipeline.final is not None:
        log.info(
            "the pipeline for Q2 '%s' in namespace '%s' had already stopped (%s) with no driver "
            "following it; its summary follows (run again to start a new one)",
            config.queue.name,
            config.ray.namespace,
            pipeline.final.get("stop_reason"),
        )
        _print_summary(pipeline.final)
        return _exit_code(pipeline.final)
    if pipeline.attached:
        log.info(
            "attached to the running pipeline for Q2 '%s' in namespace '%s' (started by "
            "another driver); following it, writing to %s",
            config.queue.name,
            config.ray.namespace,
            pipeline.output_dir,
        )
    else:
        log.info("started in %.1f s; writing to %s", time.monotonic() - t0, pipeline.output_dir)
    signals = _SignalState(asyncio.get_running_loop())
    progress = asyncio.get_running_loop().create_task(_progress(pipeline, config))
    try:
        return await _follow(pipeline, signals)
    except PipelineError as exc:  # the coordinator ended before its final stats reached here
        print(f"cxi_async: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.cancel()
        signals.restore()


async def _follow(pipeline: Any, signals: _SignalState) -> int:
    """Wait for the end, or drain on the first signal and abort on the second."""
    waiter = asyncio.ensure_future(pipeline.wait())
    try:
        stopper = asyncio.ensure_future(signals.first.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            final = waiter.result()
        else:
            log.info("%s: finishing what is in flight (again to abort)", signals.name)
            drain = asyncio.ensure_future(pipeline.drain_and_stop())
            abort = asyncio.ensure_future(signals.second.wait())
            done, _ = await asyncio.wait({drain, abort}, return_when=asyncio.FIRST_COMPLETED)
            if drain in done:
                final = drain.result()
            else:
                log.warning("%s again: aborting; batches in flight are not written", signals.name)
                drain.cancel()
                final = await pipeline.stop()
                _print_summary(final)
                return EXIT_ABORTED
    finally:
        waiter.cancel()
    _print_summary(final)
    return _exit_code(final)


def _exit_code(final: dict) -> int:
    """EXIT_FAILED when the run took batches but wrote or filtered none (e.g. all rejected)."""
    from cxi_async.core.alarms import nothing_written

    reason = nothing_written(final)
    if reason is None:
        return EXIT_OK
    print(f"cxi_async: {reason}", file=sys.stderr)
    return EXIT_FAILED


def _print_summary(final: dict) -> None:
    """The summary table; after a hang-up the terminal may be gone (EIO), and the run's
    outcome is in the report anyway, so that is no failure."""
    try:
        print(format_summary(final), flush=True)
    except OSError:
        log.warning("could not print the summary (the terminal is gone); see the run report")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _SignalState:
    """SIGINT/SIGTERM/SIGHUP: the first asks for a graceful stop, the second aborts.

    SIGHUP is what a closed terminal or SSH session sends: it stops like SIGTERM rather than
    killing the driver with batches in flight.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.first = asyncio.Event()
        self.second = asyncio.Event()
        self.name = ""
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        self.name = sig.name
        if self.first.is_set():
            self.second.set()
        self.first.set()

    def restore(self) -> None:
        for sig in STOP_SIGNALS:
            self.loop.remove_signal_handler(sig)


async def _progress(pipeline: object, config: Config) -> None:
    """A progress line every system.progress_interval_s."""
    previous: dict | None = None
    while True:
        await asyncio.sleep(config.system.progress_interval_s)
        try:
            stats = await pipeline.stats()  # type: ignore[attr-defined]
        except Exception:  # the pipeline is stopping
            return
        log.info("%s", format_progress(stats, previous))
        previous = stats


if __name__ == "__main__":
    sys.exit(main())
