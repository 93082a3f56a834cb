"""The functional core: plain modules, no Ray (decoding, peaks, geometry, CXI, books)."""
