"""Exceptions as the short text a user or a log line is shown: one helper for every such place.

Errors reach a person through a CLI message, a log line or a ``reason`` field in the stats;
each wants one line, not a traceback or a multi-line Ray dump, and the same error should read
the same wherever it is shown.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["one_line", "ray_cause", "sentence"]


def one_line(
    exc: BaseException, which: Literal["first", "last"] = "first", *, named: bool = False
) -> str:
    """One line of ``exc``'s message, for a message, a log line or a reason field.

    ``which="first"`` keeps the headline (most errors say what went wrong first);
    ``which="last"`` keeps the bottom line (a traceback text ends with the error itself).
    The line is stripped of surrounding white space and otherwise kept as it is, a closing
    period included. ``named`` puts the exception's class name before it (``"ValueError:
    bad"``), for places where the kind of error is part of the news. A message with no text
    gives the class name alone, named or not, so the result is never empty.
    """
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    line = (lines[0] if which == "first" else lines[-1]).strip()
    return f"{type(exc).__name__}: {line}" if named else line


def sentence(exc: BaseException) -> str:
    """``exc``'s whole message (stripped) as a sentence: it ends with a period.

    For an error that is the whole message shown (``cxi_async: <sentence>``). A message with
    no text gives the class name, so the sentence is never just ``"."``.
    """
    text = str(exc).strip() or type(exc).__name__
    return text if text.endswith(".") else text + "."


def ray_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task error stands for: its ``cause``, followed to the innermost.

    A ``RayTaskError`` (what awaiting a failed actor method raises) wraps the remote exception
    in ``cause``, and one raised through several actors nests; its own text is a traceback
    dump. Anything without an exception ``cause`` is returned as it is.
    """
    while True:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            return exc
        exc = cause
