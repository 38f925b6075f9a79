"""The SQL side of the metadata store: its schema, statements and the connection-level
steps MetadataStore is built from (connect, check the schema, insert in batches, copy the
live rows, look ids up). Only metadata.py uses this module."""

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from index_builder.format.records import (
    CaptionRecord,
    ImageRecord,
    check_id,
    decode_metadata,
    encode_metadata,
)

SCHEMA_VERSION = 1
BATCH_SIZE = 10_000  # records per executemany call: bounds memory on huge iterables
MAX_LISTED = 5  # ids named in an error message
ID_COLUMN = {"images": "image_id", "captions": "caption_id"}  # whitelist of table names
COLUMNS = {
    "images": "row, image_id, uri, metadata, deleted",
    "captions": "row, caption_id, text, image_id, metadata, deleted",
}

Kind = Literal["images", "captions"]

SCHEMA = """
BEGIN;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    row INTEGER PRIMARY KEY,
    image_id TEXT NOT NULL UNIQUE,
    uri TEXT,
    metadata TEXT,
    deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
);
CREATE INDEX images_deleted ON images (row) WHERE deleted = 1;
CREATE TABLE captions (
    row INTEGER PRIMARY KEY,
    caption_id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    image_id TEXT REFERENCES images (image_id),
    metadata TEXT,
    deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
);
CREATE INDEX captions_image ON captions (image_id);
CREATE INDEX captions_deleted ON captions (row) WHERE deleted = 1;
COMMIT;
"""

# Live rows renumbered in their old order; a caption whose image is deleted loses its link.
COPY_LIVE = (
    """INSERT INTO main.images (row, image_id, uri, metadata)
    SELECT ROW_NUMBER() OVER (ORDER BY row) - 1, image_id, uri, metadata
    FROM src.images WHERE deleted = 0 ORDER BY row""",
    """INSERT INTO main.captions (row, caption_id, text, image_id, metadata)
    SELECT ROW_NUMBER() OVER (ORDER BY c.row) - 1, c.caption_id, c.text,
        CASE WHEN i.deleted = 0 THEN c.image_id END, c.metadata
    FROM src.captions AS c LEFT JOIN src.images AS i ON i.image_id = c.image_id
    WHERE c.deleted = 0 ORDER BY c.row""",
)


def connect(path: Path, mode: str) -> sqlite3.Connection:
    """A URI connection in autocommit mode (transactions are explicit), shareable by threads."""
    uri = f"{path.resolve().as_uri()}?mode={mode}"
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def check_schema(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse files that are not a metadata store of the version this code reads."""
    try:
        found = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path} is not a CHAN metadata store ({error})") from error
    if found is None:
        raise ValueError(f"{path} is not a CHAN metadata store (no schema_version)")
    if found[0] != str(SCHEMA_VERSION):
        raise ValueError(
            f"{path} has metadata schema version {found[0]}, this code reads version "
            f"{SCHEMA_VERSION}; rebuild the index with this version or use a matching release"
        )


def copy_live(connection: sqlite3.Connection, source: Path) -> None:
    """Copy the live rows of the store at `source` into the empty store on `connection`."""
    connection.execute("ATTACH DATABASE ? AS src", (f"{source.resolve().as_uri()}?mode=ro",))
    try:
        connection.execute("BEGIN IMMEDIATE")
        for statement in COPY_LIVE:
            connection.execute(statement)
        connection.execute("COMMIT")
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.execute("DETACH DATABASE src")


def size(connection: sqlite3.Connection, kind: Kind) -> int:
    """Number of rows, deleted included (rows are dense, so MAX + 1: a B-tree lookup)."""
    return connection.execute(f"SELECT COALESCE(MAX(row) + 1, 0) FROM {kind}").fetchone()[0]


def batches(items: Iterable[Any], record_type: type) -> Iterator[list[Any]]:
    """Lists of at most BATCH_SIZE records, each checked to be a `record_type`."""
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH_SIZE)):
        for record in batch:
            if not isinstance(record, record_type):
                raise ValueError(f"expected {record_type.__name__}, got {type(record).__name__}")
            record.validate()
        yield batch


def insert(
    connection: sqlite3.Connection, kind: Kind, sql: str, params: list[tuple], seen: set[str]
) -> None:
    """executemany `sql`; ids (params[1]) repeated in the call or already stored: ValueError."""
    ids = [values[1] for values in params]
    repeated = []
    for item_id in ids:
        if item_id in seen:
            repeated.append(item_id)
        seen.add(item_id)
    if repeated:
        raise ValueError(f"{ID_COLUMN[kind]}s repeated in the input: {preview(repeated)}")
    try:
        connection.executemany(sql, params)
    except sqlite3.IntegrityError as error:
        stored = known_ids(connection, kind, ids)
        if not stored:
            raise
        raise ValueError(f"{ID_COLUMN[kind]}s already in the store: {preview(stored)}") from error


def known_ids(connection: sqlite3.Connection, kind: Kind, ids: list[str]) -> list[str]:
    column = ID_COLUMN[kind]
    sql = f"SELECT {column} FROM {kind} WHERE {column} IN (SELECT value FROM json_each(?))"
    return [item_id for (item_id,) in connection.execute(sql, (json.dumps(ids),))]


def unknown_ids(
    connection: sqlite3.Connection, kind: Kind, id_json: str, live_only: bool
) -> list[str]:
    """Ids of the JSON list `id_json` that the table lacks (or holds only as tombstones)."""
    live = " AND t.deleted = 0" if live_only else ""
    sql = (
        f"SELECT j.value FROM json_each(?) AS j LEFT JOIN {kind} AS t "
        f"ON t.{ID_COLUMN[kind]} = j.value{live} WHERE t.row IS NULL ORDER BY j.key"
    )
    return [item_id for (item_id,) in connection.execute(sql, (id_json,))]


def check_links(connection: sqlite3.Connection, image_ids: set[str]) -> None:
    missing = unknown_ids(connection, "images", json.dumps(sorted(image_ids)), live_only=True)
    if missing:
        raise ValueError(
            f"captions link to unknown or deleted image_ids: {preview(missing)}; "
            "add the images first"
        )


def check_kind(kind: str) -> None:
    if kind not in ID_COLUMN:
        raise ValueError(f"kind must be 'images' or 'captions', got {kind!r}")


def id_list(ids: Iterable[str]) -> list[str]:
    """Ids as a list; a bare string (which would iterate by character) is refused."""
    if isinstance(ids, str):
        raise ValueError(f"expected a list of ids, got the string {ids!r}; wrap it in a list")
    listed = list(ids)
    for item_id in listed:
        check_id(item_id, "id")
    return listed


def preview(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(value) for value in values[:MAX_LISTED])
    more = len(values) - MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown


def image_params(row: int, record: ImageRecord) -> tuple:
    return (row, record.image_id, record.uri, encode_metadata(record.metadata, record.image_id))


def caption_params(row: int, record: CaptionRecord) -> tuple:
    metadata = encode_metadata(record.metadata, record.caption_id)
    return (row, record.caption_id, record.text, record.image_id, metadata)


def image(values: tuple) -> ImageRecord:
    row, image_id, uri, metadata, deleted = values
    return ImageRecord(image_id, uri, decode_metadata(metadata), row, bool(deleted))


def caption(values: tuple) -> CaptionRecord:
    row, caption_id, text, image_id, metadata, deleted = values
    return CaptionRecord(caption_id, text, image_id, decode_metadata(metadata), row, bool(deleted))
