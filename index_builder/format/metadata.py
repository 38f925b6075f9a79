"""Metadata store of an index directory (`metadata.sqlite`): ids, URIs, text, links, tombstones.

Rows are dense, 0..N-1 in insertion order, and equal the position of the item in the
embedding arrays. Deletes are tombstones: the row stays and is flagged, so arrays need no
rewrite until `compact_mapping` / `write_compacted` renumber the live rows.

Design choices:
- Rollback journal (no WAL): a WAL database cannot be opened read-only without creating
  `-wal`/`-shm` files, and index directories may be mounted read-only in production.
- One connection per store, shared by threads (`check_same_thread=False`) and serialised
  by a lock: reads are single indexed queries (milliseconds), so contention stays low.
- Id lists travel to SQLite as one JSON array bound to `json_each(?)`: one query per call,
  whatever the length, and no SQL is ever built from user values.
"""

import hashlib
import json
import logging
import operator
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np

from index_builder.errors import QueryError
from index_builder.format.records import (
    CONTROL_CHARS,
    CaptionRecord,
    ImageRecord,
    check_id,
    decode_metadata,
    encode_metadata,
    filter_clause,
)

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BATCH_SIZE = 10_000  # records per executemany call: bounds memory on huge iterables
MAX_LISTED = 5  # ids named in an error message
_ID_COLUMN = {"images": "image_id", "captions": "caption_id"}  # whitelist of table names
_COLUMNS = {
    "images": "row, image_id, uri, metadata, deleted",
    "captions": "row, caption_id, text, image_id, metadata, deleted",
}

Kind = Literal["images", "captions"]

_SCHEMA = """
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
_COPY_LIVE = (
    """INSERT INTO main.images (row, image_id, uri, metadata)
    SELECT ROW_NUMBER() OVER (ORDER BY row) - 1, image_id, uri, metadata
    FROM src.images WHERE deleted = 0 ORDER BY row""",
    """INSERT INTO main.captions (row, caption_id, text, image_id, metadata)
    SELECT ROW_NUMBER() OVER (ORDER BY c.row) - 1, c.caption_id, c.text,
        CASE WHEN i.deleted = 0 THEN c.image_id END, c.metadata
    FROM src.captions AS c LEFT JOIN src.images AS i ON i.image_id = c.image_id
    WHERE c.deleted = 0 ORDER BY c.row""",
)


class MetadataStore:
    """Images and captions of one index, in SQLite; see the module docstring for the model.

    Deleting an image does not delete its captions: they stay searchable and keep their
    link until compaction, which drops links to deleted images. Ids of tombstoned rows stay
    reserved until compaction.
    """

    def __init__(self, connection: sqlite3.Connection, path: Path, readonly: bool) -> None:
        """Private: use `create` or `open`."""
        self._conn = connection
        self._lock = threading.Lock()
        self.path = path
        self.readonly = readonly

    @classmethod
    def create(cls, path: Path) -> Self:
        """A new, empty store at `path` (which must not exist), opened for writing."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} already exists; a metadata store is created fresh")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")
        connection = _connect(path, "rwc")
        connection.execute("PRAGMA journal_mode = DELETE")  # no -wal/-shm: see module doc
        connection.executescript(_SCHEMA)
        connection.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("schema_version", str(SCHEMA_VERSION)), ("kind", "chan-index-metadata")],
        )
        logger.debug("created metadata store %s", path)
        return cls(connection, path, readonly=False)

    @classmethod
    def open(cls, path: Path, readonly: bool = True) -> Self:
        """Open an existing store; read-only opens (`mode=ro`) never create or write files."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no metadata store at {path}")
        connection = _connect(path, "ro" if readonly else "rw")
        try:
            _check_schema(connection, path)
        except Exception:
            connection.close()
            raise
        return cls(connection, path, readonly)

    def close(self) -> None:
        """Close the connection; the store is unusable afterwards."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writes ---------------------------------------------------------------------------

    def add_images(self, items: Iterable[ImageRecord]) -> list[int]:
        """Append images atomically; returns their rows. A known or repeated id: ValueError."""
        sql = "INSERT INTO images (row, image_id, uri, metadata) VALUES (?, ?, ?, ?)"
        with self._transaction() as conn:
            rows, seen = [], set()
            start = _size(conn, "images")
            for batch in _batches(items, ImageRecord):
                params = [_image_params(start + len(rows) + i, r) for i, r in enumerate(batch)]
                _insert(conn, "images", sql, params, seen)
                rows.extend(p[0] for p in params)
        logger.debug("added %d images", len(rows))
        return rows

    def add_captions(self, items: Iterable[CaptionRecord]) -> list[int]:
        """Append captions atomically; returns their rows. Linked images must be live."""
        sql = (
            "INSERT INTO captions (row, caption_id, text, image_id, metadata) "
            "VALUES (?, ?, ?, ?, ?)"
        )
        with self._transaction() as conn:
            rows, seen = [], set()
            start = _size(conn, "captions")
            for batch in _batches(items, CaptionRecord):
                _check_links(conn, {r.image_id for r in batch if r.image_id is not None})
                params = [_caption_params(start + len(rows) + i, r) for i, r in enumerate(batch)]
                _insert(conn, "captions", sql, params, seen)
                rows.extend(p[0] for p in params)
        logger.debug("added %d captions", len(rows))
        return rows

    def delete_images(self, image_ids: Iterable[str]) -> int:
        """Tombstone images (not their captions); returns how many were live before."""
        return self._delete("images", image_ids)

    def delete_captions(self, caption_ids: Iterable[str]) -> int:
        """Tombstone captions; returns how many were live before."""
        return self._delete("captions", caption_ids)

    def _delete(self, kind: Kind, ids: Iterable[str]) -> int:
        id_json = json.dumps(_id_list(ids))
        with self._transaction() as conn:
            unknown = _unknown_ids(conn, kind, id_json, live_only=False)
            if unknown:
                raise ValueError(f"unknown {_ID_COLUMN[kind]}s: {_preview(unknown)}")
            cursor = conn.execute(
                f"UPDATE {kind} SET deleted = 1 WHERE deleted = 0 AND {_ID_COLUMN[kind]} IN "
                "(SELECT value FROM json_each(?))",
                (id_json,),
            )
        logger.info("tombstoned %d %s", cursor.rowcount, kind)
        return cursor.rowcount

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction; roll back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except sqlite3.OperationalError as error:
                self._conn.execute("ROLLBACK")
                if error.sqlite_errorname == "SQLITE_READONLY":
                    raise PermissionError(
                        f"{self.path} is read-only (opened with readonly={self.readonly}); "
                        "open it with MetadataStore.open(path, readonly=False) to write"
                    ) from error
                raise
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- reads ----------------------------------------------------------------------------

    def image_rows(self, image_ids: Sequence[str]) -> list[int | None]:
        """Row of each image id, in order; None for unknown or deleted ids."""
        return self._rows_of("images", image_ids)

    def caption_rows(self, caption_ids: Sequence[str]) -> list[int | None]:
        """Row of each caption id, in order; None for unknown or deleted ids."""
        return self._rows_of("captions", caption_ids)

    def _rows_of(self, kind: Kind, ids: Sequence[str]) -> list[int | None]:
        """Exact matches only: an id with a control character (which no stored id has, see
        check_new_id) is unknown without asking SQLite, whose text functions stop at a NUL."""
        listed = _id_list(ids)
        sql = (
            f"SELECT t.row FROM json_each(?) AS j LEFT JOIN {kind} AS t "
            f"ON t.{_ID_COLUMN[kind]} = j.value AND t.deleted = 0 ORDER BY j.key"
        )
        exact = ["" if CONTROL_CHARS.search(i) else i for i in listed]  # "" is never an id
        with self._lock:
            return [row for (row,) in self._conn.execute(sql, (json.dumps(exact),))]

    def images(self, rows: Sequence[int]) -> list[ImageRecord]:
        """Records of these rows (deleted ones included, flagged), in the given order."""
        return [_image(values) for values in self._fetch("images", rows)]

    def captions(self, rows: Sequence[int]) -> list[CaptionRecord]:
        """Records of these rows (deleted ones included, flagged), in the given order."""
        return [_caption(values) for values in self._fetch("captions", rows)]

    def _fetch(self, kind: Kind, rows: Sequence[int]) -> list[tuple]:
        wanted = [operator.index(row) for row in rows]  # refuses floats, accepts numpy ints
        columns = ", ".join(f"t.{name}" for name in _COLUMNS[kind].split(", "))
        sql = (
            f"SELECT j.value, {columns} FROM json_each(?) AS j "
            f"LEFT JOIN {kind} AS t ON t.row = j.value ORDER BY j.key"
        )
        with self._lock:
            found = self._conn.execute(sql, (json.dumps(wanted),)).fetchall()
            size = _size(self._conn, kind)
        unknown = [values[0] for values in found if values[1] is None]
        if unknown:
            raise ValueError(
                f"unknown {kind} rows {_preview(unknown)}; valid rows are 0..{size - 1}"
            )
        return [values[1:] for values in found]

    def captions_of_image(self, image_id: str) -> list[CaptionRecord]:
        """Live captions linked to `image_id`, by row (also for a deleted image)."""
        check_id(image_id, "image_id")
        sql = f"SELECT {_COLUMNS['captions']} FROM captions WHERE image_id = ? AND deleted = 0"
        with self._lock:
            if _unknown_ids(self._conn, "images", json.dumps([image_id]), live_only=False):
                raise ValueError(f"unknown image_id {image_id!r}")
            found = self._conn.execute(sql + " ORDER BY row", (image_id,)).fetchall()
        return [_caption(values) for values in found]

    def live_mask(self, kind: Kind) -> np.ndarray:
        """(N,) bool, True where the row is not deleted; one indexed query."""
        _check_kind(kind)
        with self._lock:
            size = _size(self._conn, kind)
            deleted = self._conn.execute(f"SELECT row FROM {kind} WHERE deleted = 1").fetchall()
        mask = np.ones(size, dtype=bool)
        mask[np.array([row for (row,) in deleted], dtype=np.int64)] = False
        return mask

    def filter_rows(self, kind: Kind, filter: Mapping[str, Any]) -> np.ndarray:
        """Sorted int64 rows of live items whose metadata matches every `key: value` pair.

        Keys are dotted paths into the metadata ("a.b" reads metadata["a"]["b"]) made of
        [A-Za-z0-9_-] parts. Values are str, int, float or bool, compared with their JSON
        type (True never matches 1, "1" never matches 1); a list matches any of its values.
        """
        _check_kind(kind)
        if not isinstance(filter, Mapping):
            raise QueryError(f"filter must be a dict of metadata key -> value, got {filter!r}")
        clauses, params = ["deleted = 0"], []
        for key, value in filter.items():
            clause, clause_params = filter_clause(key, value)
            clauses.append(clause)
            params.extend(clause_params)
        sql = f"SELECT row FROM {kind} WHERE {' AND '.join(clauses)} ORDER BY row"
        with self._lock:
            found = self._conn.execute(sql, params).fetchall()
        return np.array([row for (row,) in found], dtype=np.int64)

    def counts(self) -> dict[str, int]:
        """Total and live numbers of images and captions."""
        sql = (
            "SELECT (SELECT COUNT(*) FROM images), (SELECT COUNT(*) FROM captions), "
            "(SELECT COUNT(*) FROM images WHERE deleted = 0), "
            "(SELECT COUNT(*) FROM captions WHERE deleted = 0)"
        )
        with self._lock:
            values = self._conn.execute(sql).fetchone()
        return dict(
            zip(("images", "captions", "live_images", "live_captions"), values, strict=True)
        )

    def compact_mapping(self, kind: Kind) -> np.ndarray:
        """(N,) int64: old row -> new row after compaction, -1 for deleted rows."""
        mask = self.live_mask(kind)
        mapping = np.full(mask.shape, -1, dtype=np.int64)
        mapping[mask] = np.arange(int(mask.sum()), dtype=np.int64)
        return mapping

    def write_compacted(self, dest: Path) -> None:
        """Write a new store at `dest` holding only live rows, renumbered as `compact_mapping`.

        Written to a temporary name next to `dest` and renamed into place when complete.
        Captions linked to a deleted image keep their row but lose the link.
        """
        dest = Path(dest)
        if dest.exists():
            raise FileExistsError(f"{dest} already exists; choose a new path for the copy")
        temporary = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        temporary.unlink(missing_ok=True)
        try:
            with self._lock, type(self).create(temporary) as out:
                _copy_live(out._conn, self.path)
                counts = out.counts()
            os.replace(temporary, dest)
        finally:
            temporary.unlink(missing_ok=True)
        logger.info("wrote compacted metadata %s: %s", dest, counts)

    def checksum_rows(self) -> str:
        """sha256 hex of image ids then caption ids in row order (tombstones included)."""
        digest = hashlib.sha256()
        with self._lock:
            for kind, id_column in _ID_COLUMN.items():
                digest.update(f"{kind}\n".encode())
                for (item_id,) in self._conn.execute(
                    f"SELECT {id_column} FROM {kind} ORDER BY row"
                ):
                    digest.update(json.dumps(item_id).encode() + b"\n")
        return digest.hexdigest()


# -- helpers ------------------------------------------------------------------------------


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    """A URI connection in autocommit mode (transactions are explicit), shareable by threads."""
    uri = f"{path.resolve().as_uri()}?mode={mode}"
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def _check_schema(connection: sqlite3.Connection, path: Path) -> None:
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


def _copy_live(connection: sqlite3.Connection, source: Path) -> None:
    """Copy the live rows of the store at `source` into the empty store on `connection`."""
    connection.execute("ATTACH DATABASE ? AS src", (f"{source.resolve().as_uri()}?mode=ro",))
    try:
        connection.execute("BEGIN IMMEDIATE")
        for statement in _COPY_LIVE:
            connection.execute(statement)
        connection.execute("COMMIT")
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.execute("DETACH DATABASE src")


def _size(connection: sqlite3.Connection, kind: Kind) -> int:
    """Number of rows, deleted included (rows are dense, so MAX + 1: a B-tree lookup)."""
    return connection.execute(f"SELECT COALESCE(MAX(row) + 1, 0) FROM {kind}").fetchone()[0]


def _batches(items: Iterable[Any], record_type: type) -> Iterator[list[Any]]:
    """Lists of at most BATCH_SIZE records, each checked to be a `record_type`."""
    iterator = iter(items)
    while batch := list(islice(iterator, BATCH_SIZE)):
        for record in batch:
            if not isinstance(record, record_type):
                raise ValueError(f"expected {record_type.__name__}, got {type(record).__name__}")
            record.validate()
        yield batch


def _insert(
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
        raise ValueError(f"{_ID_COLUMN[kind]}s repeated in the input: {_preview(repeated)}")
    try:
        connection.executemany(sql, params)
    except sqlite3.IntegrityError as error:
        stored = _known_ids(connection, kind, ids)
        if not stored:
            raise
        raise ValueError(f"{_ID_COLUMN[kind]}s already in the store: {_preview(stored)}") from error


def _known_ids(connection: sqlite3.Connection, kind: Kind, ids: list[str]) -> list[str]:
    column = _ID_COLUMN[kind]
    sql = f"SELECT {column} FROM {kind} WHERE {column} IN (SELECT value FROM json_each(?))"
    return [item_id for (item_id,) in connection.execute(sql, (json.dumps(ids),))]


def _unknown_ids(
    connection: sqlite3.Connection, kind: Kind, id_json: str, live_only: bool
) -> list[str]:
    """Ids of the JSON list `id_json` that the table lacks (or holds only as tombstones)."""
    live = " AND t.deleted = 0" if live_only else ""
    sql = (
        f"SELECT j.value FROM json_each(?) AS j LEFT JOIN {kind} AS t "
        f"ON t.{_ID_COLUMN[kind]} = j.value{live} WHERE t.row IS NULL ORDER BY j.key"
    )
    return [item_id for (item_id,) in connection.execute(sql, (id_json,))]


def _check_links(connection: sqlite3.Connection, image_ids: set[str]) -> None:
    missing = _unknown_ids(connection, "images", json.dumps(sorted(image_ids)), live_only=True)
    if missing:
        raise ValueError(
            f"captions link to unknown or deleted image_ids: {_preview(missing)}; "
            "add the images first"
        )


def _check_kind(kind: str) -> None:
    if kind not in _ID_COLUMN:
        raise ValueError(f"kind must be 'images' or 'captions', got {kind!r}")


def _id_list(ids: Iterable[str]) -> list[str]:
    """Ids as a list; a bare string (which would iterate by character) is refused."""
    if isinstance(ids, str):
        raise ValueError(f"expected a list of ids, got the string {ids!r}; wrap it in a list")
    listed = list(ids)
    for item_id in listed:
        check_id(item_id, "id")
    return listed


def _preview(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(value) for value in values[:MAX_LISTED])
    more = len(values) - MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown


def _image_params(row: int, record: ImageRecord) -> tuple:
    return (row, record.image_id, record.uri, encode_metadata(record.metadata, record.image_id))


def _caption_params(row: int, record: CaptionRecord) -> tuple:
    metadata = encode_metadata(record.metadata, record.caption_id)
    return (row, record.caption_id, record.text, record.image_id, metadata)


def _image(values: tuple) -> ImageRecord:
    row, image_id, uri, metadata, deleted = values
    return ImageRecord(image_id, uri, decode_metadata(metadata), row, bool(deleted))


def _caption(values: tuple) -> CaptionRecord:
    row, caption_id, text, image_id, metadata, deleted = values
    return CaptionRecord(caption_id, text, image_id, decode_metadata(metadata), row, bool(deleted))
