"""cxi_async: PeakNet logits from a sharded Ray queue (Q2) to CXI files CrystFEL indexes."""

__version__ = "0.1.0"
