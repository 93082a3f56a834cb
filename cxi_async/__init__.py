"""cxi_async: PeakNet logits from a sharded Ray queue (Q2) to CXI files CrystFEL indexes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Config", "Pipeline", "__version__", "load_config"]

if TYPE_CHECKING:
    from cxi_async.config import Config, load_config
    from cxi_async.pipeline import Pipeline


def __getattr__(name: str) -> Any:
    """Import lazily: the core modules must stay importable without starting Ray."""
    if name == "Pipeline":
        from cxi_async.pipeline import Pipeline

        return Pipeline
    if name in ("Config", "load_config"):
        from cxi_async import config

        return getattr(config, name)
    raise AttributeError(f"module 'cxi_async' has no attribute {name!r}")
