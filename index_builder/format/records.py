"""Records of the metadata store and the metadata filter: validation, JSON encoding,
and the SQL condition of a `key: value` filter (no SQL is built from user values)."""

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from index_builder.errors import QueryError

ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # reused: 2x faster dumps
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


# Mutable with slots rather than frozen: construction is 3x faster, which counts at 10^6
# records; the store validates again when records are added.
@dataclass(slots=True)
class ImageRecord:
    """One gallery image. `row` and `deleted` are set by the store and ignored on input."""

    image_id: str  # unique, non-empty
    uri: str | None = None  # URI or file path of the image
    metadata: dict[str, Any] | None = None  # user metadata, JSON-serialisable
    row: int | None = None  # position in the image embedding arrays
    deleted: bool = False  # tombstone flag

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when the record cannot be stored."""
        check_new_id(self.image_id, "image_id")
        if self.uri is not None and not isinstance(self.uri, str):
            raise ValueError(f"image {self.image_id!r}: uri must be a string or None")
        _check_metadata_type(self.metadata, self.image_id)


@dataclass(slots=True)
class CaptionRecord:
    """One caption. `row` and `deleted` are set by the store and ignored on input."""

    caption_id: str  # unique, non-empty
    text: str  # the caption, non-empty
    image_id: str | None = None  # the image it describes; must be in the store
    metadata: dict[str, Any] | None = None  # user metadata, JSON-serialisable
    row: int | None = None  # position in the caption embedding arrays
    deleted: bool = False  # tombstone flag

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when the record cannot be stored."""
        check_new_id(self.caption_id, "caption_id")
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"caption {self.caption_id!r}: text must be a non-empty string")
        if self.image_id is not None:
            check_new_id(self.image_id, "image_id")
        _check_metadata_type(self.metadata, self.caption_id)


def filter_clause(key: str, value: Any) -> tuple[str, list[Any]]:
    """SQL condition (with its parameters) true when metadata at `key` equals one of `value`."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise QueryError(
            f"invalid metadata key {key!r}: use dotted parts of letters, digits, '_' or '-'"
        )
    path = "$" + "".join(f'."{part}"' for part in key.split("."))
    values = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    for item in values:
        _check_filter_value(key, item)
    # json_type keeps JSON types apart: SQLite reads true as 1, and '[1]' would equal a string.
    in_list = "json_extract(metadata, ?) IN (SELECT value FROM json_each(?))"
    groups = [
        ("json_type(metadata, ?) IN (SELECT value FROM json_each(?))", [path],
         ["true" if v else "false" for v in values if isinstance(v, bool)]),
        (f"(json_type(metadata, ?) = 'text' AND {in_list})", [path, path],
         [v for v in values if isinstance(v, str)]),
        (f"(json_type(metadata, ?) IN ('integer', 'real') AND {in_list})", [path, path],
         [v for v in values if not isinstance(v, bool | str)]),
    ]  # fmt: skip
    used = [(sql, [*paths, json.dumps(wanted)]) for sql, paths, wanted in groups if wanted]
    if not used:
        return "0", []  # an empty list matches nothing
    return "(" + " OR ".join(sql for sql, _ in used) + ")", [p for _, ps in used for p in ps]


def _check_filter_value(key: str, value: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"filter value for {key!r} must be finite, got {value!r}")
    if not isinstance(value, str | int | float):
        raise QueryError(
            f"filter value for {key!r} must be str, int, float, bool or a list of them, "
            f"got {type(value).__name__}"
        )


CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def check_id(value: Any, name: str) -> None:
    """An id to look up: a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def check_new_id(value: Any, name: str) -> None:
    """An id to store: a non-empty string without control characters, so that every
    lookup is an exact match (SQLite's text functions stop at a NUL)."""
    check_id(value, name)
    if CONTROL_CHARS.search(value):
        raise ValueError(f"{name} {value!r} contains a control character; ids may not")


def _check_metadata_type(metadata: Any, owner: str) -> None:
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(
            f"{owner!r}: metadata must be a dict or None, got {type(metadata).__name__}"
        )


def encode_metadata(metadata: dict[str, Any] | None, owner: str) -> str | None:
    """Metadata as JSON text (None stays NULL); unserialisable values: ValueError."""
    if metadata is None:
        return None
    try:
        return ENCODER.encode(metadata)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner!r}: metadata is not JSON-serialisable ({error})") from error


def decode_metadata(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)
