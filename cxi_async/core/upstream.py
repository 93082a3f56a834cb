"""The producer's item classes, wherever cxi_async unpickles Q2 items.

Ray pickles peaknet-pipeline-ray's ``PipelineOutput`` (module
``peaknet_pipeline_ray.config.data_structures``) and ``PreprocessingMetadata`` (module
``peaknet_pipeline_ray.config.schemas``) *by reference*: a process can only read an item if
those modules import there. The producer is not installable with pip as it stands, so a finder
(and a Q2 shard actor cxi_async created, which unpickles the items ``put`` into it) often
cannot. ``ensure_producer_classes`` imports the real modules when it can, and otherwise
registers stand-ins under the same module names with the same dataclass fields, in the same
order with the same defaults. A dataclass instance pickles as its class reference plus its
``__dict__``, so an item pickled by the real class unpickles into the stand-in (and back).

No Ray here: the actors call this once in ``__init__``.
"""

from __future__ import annotations

import importlib
import logging
import re
import sys
import types
from dataclasses import dataclass
from typing import Any

from cxi_async.core.errors import one_line

log = logging.getLogger(__name__)

PACKAGE = "peaknet_pipeline_ray"
DATA_STRUCTURES = f"{PACKAGE}.config.data_structures"
SCHEMAS = f"{PACKAGE}.config.schemas"
#: Module -> the classes of it that an item can reference.
PRODUCER_CLASSES: dict[str, tuple[str, ...]] = {
    DATA_STRUCTURES: ("PipelineInput", "PipelineOutput"),
    SCHEMAS: ("PreprocessingMetadata",),
}

REAL = "real"
STAND_IN = "stand-in"


@dataclass(frozen=True)
class ProducerClasses:
    """Which classes this process reads items with, and why (for ``check`` and logs)."""

    source: str  # REAL or STAND_IN
    detail: str  # where the real ones are, or why they could not be imported

    def line(self) -> str:
        if self.source == REAL:
            return f"the producer's own classes ({self.detail})"
        return f"cxi_async's stand-in classes ({self.detail})"


# -- the stand-ins: fields, order and defaults as the producer defines them --------------------


@dataclass
class PreprocessingMetadata:
    """Stand-in for the producer's: shapes before and after its bottom-right padding."""

    original_shape: Any  # (B, C, H_orig, W_orig)
    preprocessed_shape: Any  # (B*C, 1, H, W)


@dataclass
class PipelineInput:
    """Stand-in for the producer's inference input (only so that the module is complete)."""

    image_data: Any = None
    image_data_ref: Any = None
    metadata: Any = None
    batch_id: Any = None


@dataclass
class PipelineOutput:
    """Stand-in for the producer's Q2 item; no validation, an item is read as it was sent."""

    predictions: Any = None
    predictions_ref: Any = None
    metadata: Any = None
    batch_id: Any = None
    original_image_ref: Any = None
    preprocessing_metadata: Any = None


_STAND_INS: dict[str, dict[str, type]] = {
    DATA_STRUCTURES: {"PipelineInput": PipelineInput, "PipelineOutput": PipelineOutput},
    SCHEMAS: {"PreprocessingMetadata": PreprocessingMetadata},
}

_state: ProducerClasses | None = None


def ensure_producer_classes() -> ProducerClasses:
    """Make the producer's classes importable in this process: the real ones, else stand-ins.

    Idempotent and cheap after the first call. Never raises: a real package that fails to
    import (a dependency of it missing) is replaced by the stand-ins, and the reason is kept.
    """
    global _state
    if _state is not None:
        return _state
    try:
        for module, names in PRODUCER_CLASSES.items():
            found = importlib.import_module(module)
            missing = [n for n in names if not isinstance(getattr(found, n, None), type)]
            if missing:
                raise ImportError(f"{module} has no {', '.join(missing)}")
        where = getattr(sys.modules[PACKAGE], "__file__", None) or PACKAGE
        _state = ProducerClasses(REAL, f"{PACKAGE} from {where}")
    except Exception as exc:  # anything the real package raises on import
        _register_stand_ins()
        reason = one_line(exc, named=True)
        _state = ProducerClasses(STAND_IN, f"{PACKAGE} does not import here: {reason}")
        log.info("reading Q2 items with %s", _state.line())
    return _state


def _register_stand_ins() -> None:
    """Put stand-in modules in sys.modules for the package, its config package and both
    modules, replacing whatever part of a broken real package was left there."""
    package = _module(PACKAGE, package=True)
    config = _module(f"{PACKAGE}.config", package=True)
    package.config = config  # type: ignore[attr-defined]
    for name, classes in _STAND_INS.items():
        module = _module(name)
        for cls_name, cls in classes.items():
            cls.__module__ = name  # pickles by reference to the producer's names, like the real
            setattr(module, cls_name, cls)
        setattr(config, name.rsplit(".", 1)[1], module)


def _module(name: str, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name, f"cxi_async stand-in for {name} (see cxi_async.core.upstream)")
    if package:
        module.__path__ = []  # a package, so that submodule imports look in sys.modules
    sys.modules[name] = module
    return module


_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


def unreadable_item_reason(error: str, first: bool) -> str:
    """Why an item could not be read from Q2, from the text of the error unpickling raised.

    The first time (``first``) a missing module is named with the fix; later rejections keep
    to the short form so that logs and stats stay readable.
    """
    text = error.strip().splitlines()[0] if error.strip() else "unknown error"
    match = _MISSING_MODULE.search(error)
    if match is None:
        return f"the item could not be read from Q2: {text}"
    module = match[1]
    if not first:
        return f"the item could not be read from Q2: module {module!r} is missing in the finders"
    return (
        f"the item could not be read from Q2: it needs the module {module!r}, which the "
        f"finders cannot import; install the package that provides {module.split('.')[0]!r} "
        "where the finders run, or give its checkout to them through PYTHONPATH or Ray's "
        "runtime_env (ray start environment, or the job's runtime_env)"
    )
