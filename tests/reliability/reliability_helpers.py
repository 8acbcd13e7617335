"""Helpers shared by the reliability tests: the fuzz-case counter and the clear-error check."""

from __future__ import annotations

from collections import Counter

CASES: Counter[str] = Counter()


def count_case(name: str) -> None:
    """Called once per generated example so that the suite can report how many cases it tried."""
    CASES[name] += 1


def assert_clear_error(error: BaseException, *mentions: str) -> None:
    """A clear error is a ValueError/TypeError whose message names at least one of `mentions` (the bad value,
    its row or column) - not an unrelated traceback from deep inside a library."""
    assert isinstance(error, ValueError | TypeError), f"unexpected {type(error).__name__}: {error}"
    message = str(error)
    assert any(m in message for m in mentions), f"error {message!r} names none of {mentions}"
