"""Exceptions as the one sentence a log line or a stats field shows (placeholder, merged)."""

from __future__ import annotations


def one_line(exc: BaseException, which: str = "first") -> str:
    """``Type: line`` with the first (or last) non-empty line of the message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = (lines[0] if which == "first" else lines[-1]) if lines else ""
    return f"{type(exc).__name__}: {text}"
