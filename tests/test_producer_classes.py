"""The producer's item classes where items are unpickled: real when they import, else stand-ins.

The package ``peaknet_pipeline_ray`` written here is a test fixture of ours with the producer's
two modules (same module names, classes and dataclass fields), not the upstream code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cxi_async.config import dump_toml
from cxi_async.core import upstream
from tests.conftest import check_against_truth, read_cxi_files

DATA_STRUCTURES = """
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class PipelineInput:
    image_data: Any = None
    image_data_ref: Any = None
    metadata: Optional[dict] = None
    batch_id: Optional[str] = None


@dataclass
class PipelineOutput:
    predictions: Any = None
    predictions_ref: Any = None
    metadata: Optional[dict] = None
    batch_id: Optional[str] = None
    original_image_ref: Any = None
    preprocessing_metadata: Any = None

    def __post_init__(self):
        if (self.predictions is None) == (self.predictions_ref is None):
            raise ValueError("exactly one of predictions and predictions_ref")
        if not isinstance(self.metadata, dict) or not isinstance(self.batch_id, str):
            raise TypeError("metadata must be a dict and batch_id a str")
"""

SCHEMAS = """
from dataclasses import dataclass
from typing import Tuple


@dataclass
class PreprocessingMetadata:
    original_shape: Tuple[int, int, int, int]
    preprocessed_shape: Tuple[int, int, int, int]
"""

EXTRA = '''
class BeamlineThing:
    """A metadata value of a class only the producer side can import."""

    def __init__(self, value):
        self.value = value
'''


def write_fixture(root: Path, init: str = "") -> Path:
    """A throwaway ``peaknet_pipeline_ray`` with the producer's two modules under ``root``."""
    package = root / "peaknet_pipeline_ray"
    (package / "config").mkdir(parents=True)
    (package / "__init__.py").write_text(init)
    (package / "config" / "__init__.py").write_text("")
    (package / "config" / "data_structures.py").write_text(DATA_STRUCTURES)
    (package / "config" / "schemas.py").write_text(SCHEMAS)
    (root / "beamline_extra.py").write_text(EXTRA)
    return root


@pytest.fixture
def producer_pkg(tmp_path) -> Path:
    return write_fixture(tmp_path / "producer")


def env_with(path: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return env


def run_py(code: str, path: Path | None, *args: str) -> str:
    """Run Python code in a fresh interpreter (fixture on PYTHONPATH or not); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env_with(path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


# -- without Ray ---------------------------------------------------------------------------------


def load_fixture_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(f"_fixture_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # under a private name: sys.modules is left alone
    return module


def fields(cls: type) -> list[tuple[str, object]]:
    return [(f.name, f.default) for f in dataclasses.fields(cls)]


def test_stand_ins_have_the_producers_fields_in_order(producer_pkg):
    config = producer_pkg / "peaknet_pipeline_ray" / "config"
    real_ds = load_fixture_module(config / "data_structures.py", "ds")
    real_schemas = load_fixture_module(config / "schemas.py", "schemas")
    assert fields(upstream.PipelineOutput) == fields(real_ds.PipelineOutput)
    assert fields(upstream.PipelineInput) == fields(real_ds.PipelineInput)
    assert fields(upstream.PreprocessingMetadata) == fields(real_schemas.PreprocessingMetadata)
    assert upstream.PRODUCER_CLASSES == {
        "peaknet_pipeline_ray.config.data_structures": ("PipelineInput", "PipelineOutput"),
        "peaknet_pipeline_ray.config.schemas": ("PreprocessingMetadata",),
    }


PICKLE_REAL = """
import sys, numpy as np
import pickle  # Ray pickles a class importable by reference the same way
from cxi_async.core.upstream import ensure_producer_classes
from peaknet_pipeline_ray.config.data_structures import PipelineOutput
from peaknet_pipeline_ray.config.schemas import PreprocessingMetadata
print(ensure_producer_classes().source)
item = PipelineOutput(
    predictions=np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1),
    metadata={"timestamp": 1.5, "nested": {"a": [1, 2]}},
    batch_id="producer_0_batch_0",
    preprocessing_metadata=PreprocessingMetadata((1, 1, 3, 1), (1, 1, 3, 1)),
)
open(sys.argv[1], "wb").write(pickle.dumps(item))
"""

READ_WITH_STAND_INS = """
import sys, json
import pickle  # Ray pickles a class importable by reference the same way
from cxi_async.core import upstream
state = upstream.ensure_producer_classes()
item = pickle.loads(open(sys.argv[1], "rb").read())
pm = item.preprocessing_metadata
print(json.dumps({
    "source": state.source, "detail": state.detail,
    "class": f"{type(item).__module__}.{type(item).__qualname__}",
    "stand_in": (type(item), type(pm)) == (upstream.PipelineOutput, upstream.PreprocessingMetadata),
    "predictions": item.predictions.ravel().tolist(), "metadata": item.metadata,
    "batch_id": item.batch_id, "shapes": [list(pm.original_shape), list(pm.preprocessed_shape)],
    "image": item.original_image_ref, "ref": item.predictions_ref,
}))
open(sys.argv[2], "wb").write(pickle.dumps(item))
"""

READ_BACK_REAL = """
import sys
import pickle  # Ray pickles a class importable by reference the same way
from peaknet_pipeline_ray.config.data_structures import PipelineOutput
item = pickle.loads(open(sys.argv[1], "rb").read())
print(type(item) is PipelineOutput, item.batch_id, item.preprocessing_metadata.original_shape)
"""


def test_items_of_the_real_classes_round_trip_through_stand_ins(producer_pkg, tmp_path):
    sent, back = tmp_path / "sent.pkl", tmp_path / "back.pkl"
    assert run_py(PICKLE_REAL, producer_pkg, str(sent)).split() == ["real"]
    got = json.loads(run_py(READ_WITH_STAND_INS, None, str(sent), str(back)))
    assert got == {
        "source": "stand-in",
        "detail": "peaknet_pipeline_ray does not import here: ModuleNotFoundError: "
        "No module named 'peaknet_pipeline_ray'",
        "class": "peaknet_pipeline_ray.config.data_structures.PipelineOutput",
        "stand_in": True,
        "predictions": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
        "metadata": {"timestamp": 1.5, "nested": {"a": [1, 2]}},
        "batch_id": "producer_0_batch_0",
        "shapes": [[1, 1, 3, 1], [1, 1, 3, 1]],
        "image": None,
        "ref": None,
    }
    # What a stand-in shard returns from get() reads as the real class where it imports.
    assert run_py(READ_BACK_REAL, producer_pkg, str(back)).split() == [
        "True",
        "producer_0_batch_0",
        "(1,",
        "1,",
        "3,",
        "1)",
    ]


def test_a_real_package_that_fails_to_import_gives_stand_ins(tmp_path):
    broken = write_fixture(tmp_path / "broken", init="import peaknet_model_not_here\n")
    out = run_py(
        """
        from cxi_async.core import upstream
        s = upstream.ensure_producer_classes()
        from peaknet_pipeline_ray.config.data_structures import PipelineOutput
        print(s.source, PipelineOutput is upstream.PipelineOutput)
        print(s.detail)
        """,
        broken,
    )
    assert out.splitlines() == [
        "stand-in True",
        "peaknet_pipeline_ray does not import here: ModuleNotFoundError: "
        "No module named 'peaknet_model_not_here'",
    ]


def test_unreadable_item_reason_names_the_module_and_the_fix_once():
    error = "RaySystemError: System error: No module named 'beamline_extra'\ntraceback: ..."
    assert upstream.unreadable_item_reason(error, first=True) == (
        "the item could not be read from Q2: it needs the module 'beamline_extra', which the "
        "finders cannot import; install the package that provides 'beamline_extra' where the "
        "finders run, or give its checkout to them through PYTHONPATH or Ray's runtime_env "
        "(ray start environment, or the job's runtime_env)"
    )
    assert upstream.unreadable_item_reason(error, first=False) == (
        "the item could not be read from Q2: module 'beamline_extra' is missing in the finders"
    )
    assert upstream.unreadable_item_reason("OSError: disk\nmore", first=True) == (
        "the item could not be read from Q2: OSError: disk"
    )


@pytest.mark.parametrize(("with_fixture", "expected"), [(True, "own"), (False, "stand-in")])
def test_check_says_which_classes_the_local_finders_use(
    producer_pkg, tmp_path, with_fixture, expected
):
    done = subprocess.run(
        [sys.executable, "-m", "cxi_async", "check", str(Path(__file__).parents[1] / "config.toml"),
         "--set", f"output.output_dir={tmp_path / 'out'}"],
        env=env_with(producer_pkg if with_fixture else None),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("Q2 items:")]
    assert len(lines) == 1
    if expected == "own":
        assert lines[0].startswith("Q2 items: the finders read them with the producer's own")
        assert str(producer_pkg) in lines[0]
    else:
        assert lines[0] == (
            "Q2 items: the finders read them with cxi_async's stand-in classes "
            "(peaknet_pipeline_ray does not import here: ModuleNotFoundError: "
            "No module named 'peaknet_pipeline_ray')"
        )


# -- with a real local Ray -----------------------------------------------------------------------

PRODUCER = """
import sys, ray
from cxi_async.config import load_config
from cxi_async.replay.producer import replay_batch
from peaknet_pipeline_ray.config.data_structures import PipelineOutput
from peaknet_pipeline_ray.config.schemas import PreprocessingMetadata

config = load_config(sys.argv[1])
address, mode, fixture = sys.argv[2], sys.argv[3], sys.argv[4]
env = {"env_vars": {"PYTHONPATH": fixture}}
ray.init(address=address, namespace=config.ray.namespace, log_to_driver=False, runtime_env=env)
name = f"{config.queue.name}_shard_0"
if mode == "own-shard":  # a shard the producer made, where its packages import
    from cxi_async.actors.q2_shard import RemoteQ2Shard
    shard = RemoteQ2Shard.options(name=name, lifetime="detached").remote(maxsize=16)
else:
    shard = ray.get_actor(name)
refs = []
for i in range(config.replay.num_batches):
    b = replay_batch(config, i)
    metadata = dict(b.metadata)
    if mode == "own-shard":
        import beamline_extra
        metadata["thing"] = beamline_extra.BeamlineThing(i)
    refs.append(ray.put(b.image))
    item = PipelineOutput(
        predictions=b.predictions_tensor(), metadata=metadata, batch_id=b.batch_id,
        original_image_ref=refs[-1],
        preprocessing_metadata=PreprocessingMetadata(
            tuple(b.preprocessing_metadata.original_shape),
            tuple(b.preprocessing_metadata.preprocessed_shape)),
    )
    assert ray.get(shard.put.remote(item)), "Q2 full"
print("put", config.replay.num_batches, flush=True)
sys.stdin.readline()  # keep the images alive until the test has drained Q2
"""


def start_producer(tmp_path: Path, config, fixture: Path, mode: str) -> subprocess.Popen:
    import ray

    config_path = tmp_path / f"producer-{mode}.toml"
    config_path.write_text(dump_toml(config))
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.Popen(
        [sys.executable, str(script), str(config_path), address, mode, str(fixture)],
        env=env_with(fixture),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("put"):
        proc.kill()
        raise AssertionError(f"producer failed: {proc.stderr.read()[-3000:]}")
    return proc


def stop_producer(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=60)


@pytest.mark.usefixtures("ray_session")
async def test_finders_read_real_class_items_with_stand_ins(make_config, producer_pkg, tmp_path):
    """A producer with the real classes puts into a shard cxi_async made; nobody on the
    consumer side can import them, and every event is written with its truth."""
    from cxi_async.actors.q2_shard import connect_shards
    from cxi_async.pipeline import Pipeline
    from cxi_async.replay.producer import truth_for

    config = make_config("replay.enabled=false", "replay.num_batches=3", "stop.idle_timeout_s=1")
    connect_shards(config.queue.name, config.ray.namespace, 1, 16)
    proc = start_producer(tmp_path, config, producer_pkg, "cxi-shard")
    try:
        pipeline = await Pipeline.start(config)
        stats = await pipeline.stats()
        final = await pipeline.wait()
    finally:
        stop_producer(proc)
    assert {f["producer_classes"] for f in stats["finders"]} == {"stand-in"}
    assert final["batches_rejected"] == 0 and final["batches_taken"] == 3
    kept, _ = check_against_truth(
        read_cxi_files(pipeline.output_dir), truth_for(config), panel_height=32
    )
    assert final["events_written"] == kept > 0


@pytest.mark.slow  # a producer job with a runtime_env of its own, ~25 s; the message is exact above
@pytest.mark.usefixtures("ray_session")
async def test_a_module_the_finders_lack_is_named_with_the_fix(make_config, producer_pkg, tmp_path):
    from cxi_async.pipeline import Pipeline

    config = make_config("replay.enabled=false", "replay.num_batches=2", "stop.idle_timeout_s=1")
    proc = start_producer(tmp_path, config, producer_pkg, "own-shard")
    try:
        pipeline = await Pipeline.start(config)
        final = await pipeline.wait()
    finally:
        stop_producer(proc)
    assert final["batches_rejected"] == 2
    reasons = [r["reason"] for r in final["last_rejections"]]
    named = [r for r in reasons if "it needs the module 'beamline_extra'" in r]
    assert len(named) >= 1 and "PYTHONPATH or Ray's runtime_env" in named[0]
    assert all("beamline_extra" in r for r in reasons)


@pytest.mark.usefixtures("ray_session")
def test_check_asks_a_finder_placed_on_the_cluster(make_config):
    from cxi_async.commands import producer_classes_where_finders_run

    classes = producer_classes_where_finders_run(make_config())
    assert classes.source == "stand-in"  # the session's Ray workers cannot import the fixture


REAL_JOB = """
import asyncio, json, sys, ray
from cxi_async.actors.q2_shard import connect_shards
from cxi_async.config import load_config
from cxi_async.pipeline import Pipeline
from cxi_async.replay.producer import replay_batch
from peaknet_pipeline_ray.config.data_structures import PipelineOutput
from peaknet_pipeline_ray.config.schemas import PreprocessingMetadata

config = load_config(sys.argv[1])
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
         namespace=config.ray.namespace)
shard = connect_shards(config.queue.name, config.ray.namespace, 1, 16)[0]
for i in range(config.replay.num_batches):
    b = replay_batch(config, i)
    item = PipelineOutput(
        predictions=b.predictions_tensor(), metadata=dict(b.metadata), batch_id=b.batch_id,
        original_image_ref=ray.put(b.image),
        preprocessing_metadata=PreprocessingMetadata(
            tuple(b.preprocessing_metadata.original_shape),
            tuple(b.preprocessing_metadata.preprocessed_shape)))
    assert ray.get(shard.put.remote(item))

async def main():
    pipeline = await Pipeline.start(config)
    stats = await pipeline.stats()
    final = await pipeline.wait()
    return {"classes": [f["producer_classes"] for f in stats["finders"]],
            "rejected": final["batches_rejected"], "written": final["events_written"],
            "output_dir": str(pipeline.output_dir)}

print(json.dumps(asyncio.run(main())))
ray.kill(shard)
ray.shutdown()
"""


@pytest.mark.slow  # a Ray of its own in a subprocess, ~30 s
def test_finders_use_the_real_classes_when_they_import(producer_pkg, tmp_path):
    from cxi_async.config import load_config
    from cxi_async.replay.producer import truth_for
    from tests.conftest import tiny_overrides

    overrides = [
        *tiny_overrides(tmp_path, "upstream-real"),
        "replay.enabled=false",
        "replay.num_batches=3",
        "stop.idle_timeout_s=1",
    ]
    config = load_config(None, overrides)
    config_path = tmp_path / "real.toml"
    config_path.write_text(dump_toml(config))
    out = run_py(REAL_JOB, producer_pkg, str(config_path))
    got = json.loads(out.strip().splitlines()[-1])
    assert got["classes"] == ["real", "real"] and got["rejected"] == 0
    kept, _ = check_against_truth(
        read_cxi_files(Path(got["output_dir"])), truth_for(config), panel_height=32
    )
    assert got["written"] == kept > 0
