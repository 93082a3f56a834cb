"""cxi_async.core.errors: the exact text every user-facing error is shown as."""

from __future__ import annotations

import pytest

from cxi_async.core.errors import one_line, ray_cause, sentence

MULTI = ValueError("  headline here.\n  detail 1\n\n  bottom line.  \n")


def test_one_line_first_is_the_headline_as_it_is() -> None:
    assert one_line(MULTI) == "headline here."
    assert one_line(MULTI, "first") == "headline here."


def test_one_line_last_is_the_bottom_line() -> None:
    assert one_line(MULTI, "last") == "bottom line."


def test_one_line_named_puts_the_class_first() -> None:
    assert one_line(MULTI, named=True) == "ValueError: headline here."
    assert one_line(MULTI, "last", named=True) == "ValueError: bottom line."


@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("which", ["first", "last"])
def test_one_line_without_text_is_the_class_name(which, named) -> None:
    assert one_line(KeyboardInterrupt(), which, named=named) == "KeyboardInterrupt"
    assert one_line(RuntimeError(" \n "), which, named=named) == "RuntimeError"


def test_one_line_single_line() -> None:
    assert one_line(OSError("disk full")) == "disk full"
    assert one_line(OSError("disk full"), "last") == "disk full"


def test_sentence_ends_with_one_period() -> None:
    assert sentence(ValueError(" no period ")) == "no period."
    assert sentence(ValueError("has one.")) == "has one."
    assert sentence(ValueError("two\nlines")) == "two\nlines."
    assert sentence(ValueError("")) == "ValueError."


class _TaskError(Exception):
    """Like ray.exceptions.RayTaskError: a traceback text and the remote error in ``cause``."""

    def __init__(self, cause: object) -> None:
        super().__init__("Traceback (most recent call last):\n  ...\nsomething")
        self.cause = cause


def test_ray_cause_follows_nested_causes_to_the_innermost() -> None:
    inner = ValueError("the real reason")
    assert ray_cause(_TaskError(_TaskError(inner))) is inner
    assert one_line(ray_cause(_TaskError(inner)), "last") == "the real reason"


def test_ray_cause_keeps_an_error_without_an_exception_cause() -> None:
    plain = RuntimeError("plain")
    assert ray_cause(plain) is plain
    odd = _TaskError("not an exception")  # Ray's actor-died errors carry a context object
    assert ray_cause(odd) is odd
    selfish = _TaskError(None)
    selfish.cause = selfish
    assert ray_cause(selfish) is selfish


def test_ray_cause_of_a_real_ray_task_error() -> None:
    exceptions = pytest.importorskip("ray.exceptions")
    inner = ZeroDivisionError("division by zero")
    err = exceptions.RayTaskError("f", "Traceback ...\nZeroDivisionError: division by zero", inner)
    assert ray_cause(err) is inner
