"""Errors shown in one line: what a caller prints or answers when something below it failed."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none
    (library errors often carry a multi-line dump that would break a one-line report)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
