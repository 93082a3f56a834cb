"""Commands besides `run`: check, status, health, stop (see `python -m cxi_async <command> --help`).

- `check` validates a configuration: the settings, the geometry, the output directory,
  whether the producer's item classes import where the finders run (real or cxi_async's
  stand-ins; asked of the cluster only when ray.address is set) and, with
  `--pipeline-config`, the settings the producer's YAML must share.
- `status` attaches to the running pipeline's Ray cluster and prints the coordinator's stats.
- `health` does the same and answers with an exit code, for cron jobs and probes.
- `stop` attaches the same way and drains and stops the pipeline, driver or not.

Exit codes: 0 fine, 1 a mismatch / no pipeline / unhealthy, 2 a configuration error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from cxi_async.config import Config, ConfigError, load_config
from cxi_async.core.errors import one_line, sentence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

STATS_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 5.0
PROBE_ACTOR_TIMEOUT_S = 60.0
DEFAULT_STALL_S = 60.0


class PipelineNotReachable(RuntimeError):
    """No Ray cluster, no coordinator actor, or a coordinator that does not answer."""


# --------------------------------------------------------------------------- arguments


def build_parser(command: str) -> argparse.ArgumentParser:
    descriptions = {
        "check": (
            "Validate a configuration (settings, geometry, output directory) without starting "
            "anything; with --pipeline-config also compare it with the producer's YAML."
        ),
        "status": "Print the running pipeline's progress and counts (from its coordinator actor).",
        "stop": (
            "Drain and stop the running pipeline (whether or not a driver still follows it): "
            "finish and write every batch in flight, write the report, print the summary."
        ),
        "health": (
            "Exit 0 when the running pipeline is healthy, 1 with one sentence when it is not: "
            "unreachable, a finder, writer or Q2 shard that does not answer, a writer that "
            "cannot write, Q2 full, most recent batches rejected, or stalled with every "
            "credit in use."
        ),
    }
    parser = argparse.ArgumentParser(
        prog=f"python -m cxi_async {command}", description=descriptions[command]
    )
    add_config_arguments(parser)
    if command == "check":
        parser.add_argument(
            "--pipeline-config",
            metavar="PIPELINE_YAML",
            help="peaknet-pipeline-ray YAML whose Q2 settings must match this configuration",
        )
    if command == "status":
        parser.add_argument("--json", action="store_true", help="print the stats as JSON")
    if command == "health":
        parser.add_argument(
            "--stall-s",
            type=_positive_seconds,
            default=DEFAULT_STALL_S,
            metavar="SECONDS",
            help="unhealthy when every credit is in use and no batch finished for this long "
            f"(default {DEFAULT_STALL_S:g})",
        )
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every command shares: the config file and --set overrides."""
    parser.add_argument("config", help="TOML configuration file (see config.toml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set processing.num_finders=4 (repeatable)",
    )


def main(command: str, argv: Sequence[str]) -> int:
    """Entry point used by `python -m cxi_async <command> ...`; returns the exit code."""
    args = build_parser(command).parse_args(list(argv))
    try:
        # status/health may run on a host that cannot see the output directory.
        config = load_config(args.config, args.overrides, check_paths=command == "check")
    except ConfigError as exc:
        _error(str(exc))
        return EXIT_CONFIG
    if command == "check":
        return check(config, args.config, args.pipeline_config)
    if command == "status":
        return status(config, as_json=args.json)
    if command == "stop":
        return stop(config)
    return health(config, stall_s=args.stall_s)


def _error(message: str) -> None:
    print(f"cxi_async: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- check


def check(config: Config, config_path: str, pipeline_config: str | None = None) -> int:
    """Print what the configuration resolves to; compare with the producer's YAML if given."""
    from cxi_async.core.geometry import GeometryError, SlabLayout, load_layout
    from cxi_async.core.producer_config import ProducerConfigError, check_producer_config

    print(f"{config_path}: valid")
    ok = True
    r = config.replay
    layout: SlabLayout | None = None
    if config.geometry.geom_file is not None:
        try:
            layout = load_layout(config.geometry.geom_file)
        except GeometryError as exc:
            _error(f"geometry.geom_file: {sentence(exc)}")
            return EXIT_CONFIG
        print(f"geometry: {layout.geom_file}: {_layout_text(layout)}")
        if r.enabled:
            try:
                layout.check(r.num_panels, *r.panel_shape)
                print(f"✓ replay.num_panels and replay.panel_shape fit {layout.describe()}")
            except GeometryError as exc:
                print(f"✗ replay: {sentence(exc)}")
                ok = False
    elif r.enabled:
        stacked = SlabLayout.stacked(r.num_panels, *r.panel_shape)
        print(f"geometry: none, panels stacked along the slow scan: {_layout_text(stacked)}")
    else:
        print("geometry: none, panels stacked along the slow scan (slab shape follows the data)")

    print(f"output: {_output_text(config)}")
    rc = config.ray
    where = f"ray.address = {rc.address}" if rc.address else "a local Ray (ray.address not set)"
    shards = config.queue.num_shards
    print(
        f"queue: Q2 '{config.queue.name}', {shards} shard{'s' if shards != 1 else ''}, "
        f"namespace '{rc.namespace}', on {where}"
    )

    _print_producer_classes(config)

    if pipeline_config is not None:
        try:
            checks = check_producer_config(config, pipeline_config)
        except ProducerConfigError as exc:
            _error(str(exc))
            return EXIT_CONFIG
        print(f"producer configuration {pipeline_config}:")
        for c in checks:
            print(f"  {c.line()}")
        wrong = sum(not c.ok for c in checks)
        if wrong:
            print(
                f"{wrong} setting{'s' if wrong > 1 else ''} must change before cxi_async can "
                "drain this producer's Q2"
            )
        ok = ok and not wrong
    return EXIT_OK if ok else EXIT_FAILED


def _print_producer_classes(config: Config) -> None:
    """Say which classes the finders unpickle Q2 items with (a finder without any rejects all)."""
    try:
        classes = producer_classes_where_finders_run(config)
    except PipelineNotReachable as exc:
        print(f"Q2 items: not verified where the finders run: {exc}")
        return
    print(f"Q2 items: the finders read them with {classes.line()}")


class _ClassesProbe:
    """A throwaway actor with the finders' options: which producer classes import there."""

    def classes(self) -> Any:
        from cxi_async.core.upstream import ensure_producer_classes

        return ensure_producer_classes()


def producer_classes_where_finders_run(
    config: Config, timeout_s: float = PROBE_ACTOR_TIMEOUT_S
) -> Any:
    """The `upstream.ProducerClasses` of a process placed like a finder.

    With a local Ray (no ray.address, not connected) the finders are started from this
    environment, so this process answers. Otherwise a probe actor with the finders' options
    answers from the cluster; PipelineNotReachable when none can be asked.
    """
    import ray

    from cxi_async.actors.placement import actor_options
    from cxi_async.core.upstream import ensure_producer_classes

    if not ray.is_initialized() and config.ray.address is None:
        return ensure_producer_classes()
    connected_here = False
    if not ray.is_initialized():
        from cxi_async.pipeline import address_unreachable

        reason = address_unreachable(config.ray.address, PROBE_TIMEOUT_S)
        if reason is not None:
            raise PipelineNotReachable(
                f"nothing answers at ray.address = {config.ray.address} ({reason})"
            )
        try:
            ray.init(
                address=config.ray.address,
                namespace=config.ray.namespace,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PipelineNotReachable(
                f"could not connect to Ray at ray.address = {config.ray.address}: "
                f"{one_line(exc).rstrip('.')}"
            ) from None
        connected_here = True
    try:
        options = actor_options(config, "finder")
        probe = ray.remote(_ClassesProbe).options(**options, max_restarts=0).remote()
        try:
            return ray.get(probe.classes.remote(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise PipelineNotReachable(
                f"no node started an actor with the finders' options within {timeout_s:g} s "
                "(processing.finder_num_cpus, placement.finder_resources / label selector)"
            ) from None
        finally:
            ray.kill(probe)
    finally:
        if connected_here:
            ray.shutdown()


def _layout_text(layout: Any) -> str:
    h, w = layout.panel_shape
    ss, fs = layout.slab_shape
    return f"{layout.num_panels} panels of {h} x {w} -> slab {ss} x {fs}"


def _output_text(config: Config) -> str:
    from cxi_async.pipeline import output_location

    directory, _ = output_location(config)
    resolved = directory.resolve()
    state = "exists" if resolved.is_dir() else "will be created"
    key = config.output.run_from_metadata
    if key is not None:
        label = f"; each run in a sub-directory named by metadata[{key!r}]"
    elif config.output.run:
        label = ""
    else:
        label = "; files are labelled with the start time"
    return f"{resolved} ({state}{label})"


# --------------------------------------------------------------------------- status / health


@contextlib.contextmanager
def _attached(config: Config) -> Iterator[None]:
    """Attach to the pipeline's Ray cluster (if not attached); disconnect again after, when
    it was this call that connected. Raises PipelineNotReachable with the sentence to show."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = config.ray.address or "auto"
    _probe(config, address)
    try:
        ray.init(
            address=address,
            namespace=config.ray.namespace,
            log_to_driver=False,
            logging_level=logging.ERROR,  # not the token-auth notice on every call
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        if config.ray.address:
            why = (
                f"could not connect to Ray at ray.address = {address}: {one_line(exc).rstrip('.')}"
            )
        else:
            why = (
                "there is no Ray cluster on this host (ray.address is not set, so "
                "cxi_async looked for a local one)"
            )
        raise PipelineNotReachable(
            f"no cxi_async pipeline for Q2 '{config.queue.name}' is running: {why}"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def fetch_stats(config: Config, timeout_s: float = STATS_TIMEOUT_S) -> dict:
    """Attach to the pipeline's Ray cluster (if not attached), ask the coordinator for stats.

    Raises PipelineNotReachable with the sentence to show.
    """
    with _attached(config):
        return _ask_coordinator(config, timeout_s)


def _probe(config: Config, address: str) -> None:
    """Fail fast when nothing listens at `host:port`: ray.init retries for minutes there."""
    from cxi_async.pipeline import address_unreachable

    reason = address_unreachable(address, PROBE_TIMEOUT_S)
    if reason is not None:
        raise PipelineNotReachable(
            f"no cxi_async pipeline for Q2 '{config.queue.name}' is running: nothing answers at "
            f"ray.address = {address} ({reason})"
        )


def _get_coordinator(config: Config) -> Any:
    import ray

    from cxi_async.pipeline import coordinator_name

    name = coordinator_name(config)
    namespace = config.ray.namespace
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        raise PipelineNotReachable(
            f"no cxi_async pipeline for Q2 '{config.queue.name}' is running in namespace "
            f"'{namespace}'{_elsewhere(name, namespace)}"
        ) from None


def _ask_coordinator(config: Config, timeout_s: float) -> dict:
    import ray

    from cxi_async.pipeline import coordinator_name

    name = coordinator_name(config)
    namespace = config.ray.namespace
    coordinator = _get_coordinator(config)
    try:
        return ray.get(coordinator.stats.remote(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise PipelineNotReachable(
            f"the cxi_async coordinator {name} in namespace '{namespace}' did not answer within "
            f"{timeout_s:g} s"
        ) from None
    except ray.exceptions.RayActorError:
        raise PipelineNotReachable(
            f"the cxi_async coordinator {name} in namespace '{namespace}' is dead"
        ) from None


def _elsewhere(name: str, namespace: str) -> str:
    """A hint when the coordinator runs in another namespace, or drains another queue."""
    import ray

    try:
        actors = ray.util.list_named_actors(all_namespaces=True)
    except Exception:  # only a hint
        return ""
    other_ns = sorted({a["namespace"] for a in actors if a["name"] == name})
    if other_ns:
        return f" (there is one in namespace '{other_ns[0]}': set ray.namespace)"
    prefix = name.split(":", 1)[0] + ":"
    queues = sorted(
        a["name"][len(prefix) :]
        for a in actors
        if a["namespace"] == namespace and a["name"].startswith(prefix)
    )
    if queues:
        return f" (there is one for Q2 '{queues[0]}': set queue.name)"
    return ""


def status(config: Config, *, as_json: bool = False) -> int:
    try:
        stats = fetch_stats(config)
    except PipelineNotReachable as exc:
        _error(str(exc))
        return EXIT_FAILED
    if as_json:
        print(json.dumps(stats, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    from cxi_async.core.summary import format_progress, format_summary

    state = f"stopping: {stats.get('stop_reason')}" if stats.get("stopping") else "running"
    print(
        f"cxi_async pipeline for Q2 '{config.queue.name}' in namespace "
        f"'{config.ray.namespace}': {state}, {stats['elapsed_s']:.1f} s"
    )
    print(format_progress(stats))
    print(format_summary(stats))
    return EXIT_OK


def stop(config: Config) -> int:
    """Drain and stop the pipeline (no driver needed), then free its coordinator's name."""
    import ray

    from cxi_async.core.summary import format_summary

    try:
        with _attached(config):
            coordinator = _get_coordinator(config)
            try:
                final = ray.get(coordinator.drain_and_stop.remote("asked to drain and stop (stop)"))
            except ray.exceptions.RayActorError:
                raise PipelineNotReachable(
                    f"the cxi_async coordinator of Q2 '{config.queue.name}' died while stopping; "
                    "what it renamed is listed, what was in flight is still in no file"
                ) from None
            ray.get(coordinator.release.remote())  # it exits once no follower waits
            _wait_until_gone(config)
    except PipelineNotReachable as exc:
        _error(str(exc))
        return EXIT_FAILED
    print(format_summary(final))
    return EXIT_OK


def _wait_until_gone(config: Config, timeout_s: float = 10.0) -> None:
    """Until the released coordinator has exited and its name is free for the next run."""
    import ray

    from cxi_async.pipeline import coordinator_name

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(coordinator_name(config), namespace=config.ray.namespace)
        except ValueError:
            return
        time.sleep(0.1)


def health(config: Config, *, stall_s: float = DEFAULT_STALL_S) -> int:
    try:
        stats = fetch_stats(config)
    except PipelineNotReachable as exc:
        print(f"unhealthy: {exc}")
        return EXIT_FAILED
    ok, reason = assess_health(stats, stall_s)
    print(f"{'healthy' if ok else 'unhealthy'}: {reason}")
    return EXIT_OK if ok else EXIT_FAILED


def assess_health(stats: dict, stall_s: float) -> tuple[bool, str]:
    """(healthy, one sentence) from one coordinator stats dict.

    Unhealthy: a finder or writer that does not answer (`{"dead": True}`), a writer whose
    writes keep failing, a Q2 shard that does not answer, Q2 full (the producer drops
    batches), more than half of the last 50 batches rejected, or a stall: every credit in use
    and no batch finished for `stall_s` (from the coordinator's `seconds_since_last_ack`).
    """
    problems: list[str] = []
    for group, kind in (("finders", "finder"), ("writers", "writer")):
        actors = stats.get(group) or []
        dead = [i for i, a in enumerate(actors) if a.get("dead")]
        if dead:
            problems.append(f"{_count(kind, dead)} of {len(actors)} {_do(dead)} not answer")
    failing = [i for i, w in enumerate(stats.get("writers") or []) if w.get("failing")]
    if failing:
        problems.append(f"{_count('writer', failing)} cannot write files (retrying)")
    shards = list(stats.get("dead_shards") or [])
    if shards:
        problems.append(f"{_count('Q2 shard', shards)} {_do(shards)} not answer")
    problems += _loss_problems(stats)

    in_use, credits = stats.get("credits_in_use", 0), stats.get("credits", 0)
    since = stats.get("seconds_since_last_ack")
    exhausted = credits > 0 and in_use >= credits
    if exhausted and since is not None and since >= stall_s:
        problems.append(
            f"stalled: all {credits} credits are in use and no batch was finished for "
            f"{since:.0f} s (--stall-s {stall_s:g})"
        )
    if problems:
        return False, "; ".join(problems) + "."

    done = stats.get("events_written", 0) + stats.get("events_filtered", 0)
    parts = [
        f"{stats.get('events_written', 0)} events written",
        f"{done / stats['elapsed_s']:.1f} events/s" if stats.get("elapsed_s") else None,
        f"credits {in_use}/{credits}",
        f"Q2 depth {stats.get('q2_depth', 0)}",
        f"last batch finished {since:.0f} s ago" if since is not None else None,
        f"stopping ({stats.get('stop_reason')})" if stats.get("stopping") else None,
    ]
    text = ", ".join(p for p in parts if p)
    if since is None and exhausted:
        text += " (stall not assessed: the coordinator does not report seconds_since_last_ack)"
    return True, text + "."


def _loss_problems(stats: dict) -> list[str]:
    """Data being lost: Q2 full now, most of the last 50 batches rejected, or a pool that
    needs to grow and cannot."""
    from cxi_async.core.alarms import pool_problem, q2_full_problem, rejection_problem

    problems = (q2_full_problem(stats), rejection_problem(stats), pool_problem(stats))
    return [p for p in problems if p]


def _count(kind: str, indices: list[int]) -> str:
    if len(indices) == 1:
        return f"{kind} {indices[0]}"
    return f"{kind}s {', '.join(str(i) for i in indices)}"


def _do(indices: list[int]) -> str:
    return "does" if len(indices) == 1 else "do"
