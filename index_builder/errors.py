"""The errors a search raises for its caller to translate: a query the index cannot answer
as asked (QueryError, the caller's to fix) and an id the index does not hold."""

from __future__ import annotations


class QueryError(ValueError):
    """A request the index cannot answer as asked: a bad k, an empty text, a malformed
    filter, a query form the index cannot encode. The message says what to change."""


class UnknownIdError(KeyError):
    """An image or caption id that is not in the index (or was deleted)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0])
