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
from pathlib import Path
from typing import Any, Self

import numpy as np

from index_builder.errors import QueryError
from index_builder.format import metadata_sql as db
from index_builder.format.metadata_sql import SCHEMA_VERSION, Kind
from index_builder.format.records import (
    CONTROL_CHARS,
    CaptionRecord,
    ImageRecord,
    check_id,
    filter_clause,
)

logger = logging.getLogger(__name__)


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
        connection = db.connect(path, "rwc")
        connection.execute("PRAGMA journal_mode = DELETE")  # no -wal/-shm: see module doc
        connection.executescript(db.SCHEMA)
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
        connection = db.connect(path, "ro" if readonly else "rw")
        try:
            db.check_schema(connection, path)
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
            start = db.size(conn, "images")
            for batch in db.batches(items, ImageRecord):
                params = [db.image_params(start + len(rows) + i, r) for i, r in enumerate(batch)]
                db.insert(conn, "images", sql, params, seen)
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
            start = db.size(conn, "captions")
            for batch in db.batches(items, CaptionRecord):
                db.check_links(conn, {r.image_id for r in batch if r.image_id is not None})
                params = [db.caption_params(start + len(rows) + i, r) for i, r in enumerate(batch)]
                db.insert(conn, "captions", sql, params, seen)
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
        id_json = json.dumps(db.id_list(ids))
        with self._transaction() as conn:
            unknown = db.unknown_ids(conn, kind, id_json, live_only=False)
            if unknown:
                raise ValueError(f"unknown {db.ID_COLUMN[kind]}s: {db.preview(unknown)}")
            cursor = conn.execute(
                f"UPDATE {kind} SET deleted = 1 WHERE deleted = 0 AND {db.ID_COLUMN[kind]} IN "
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
                if self._conn.in_transaction:  # SQLite rolls back by itself on a full disk
                    self._conn.execute("ROLLBACK")
                if error.sqlite_errorname == "SQLITE_READONLY":
                    raise PermissionError(
                        f"{self.path} is read-only (opened with readonly={self.readonly}); "
                        "open it with MetadataStore.open(path, readonly=False) to write"
                    ) from error
                raise
            except BaseException:
                if self._conn.in_transaction:
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
        listed = db.id_list(ids)
        sql = (
            f"SELECT t.row FROM json_each(?) AS j LEFT JOIN {kind} AS t "
            f"ON t.{db.ID_COLUMN[kind]} = j.value AND t.deleted = 0 ORDER BY j.key"
        )
        exact = ["" if CONTROL_CHARS.search(i) else i for i in listed]  # "" is never an id
        with self._lock:
            return [row for (row,) in self._conn.execute(sql, (json.dumps(exact),))]

    def images(self, rows: Sequence[int]) -> list[ImageRecord]:
        """Records of these rows (deleted ones included, flagged), in the given order."""
        return [db.image(values) for values in self._fetch("images", rows)]

    def captions(self, rows: Sequence[int]) -> list[CaptionRecord]:
        """Records of these rows (deleted ones included, flagged), in the given order."""
        return [db.caption(values) for values in self._fetch("captions", rows)]

    def _fetch(self, kind: Kind, rows: Sequence[int]) -> list[tuple]:
        wanted = [operator.index(row) for row in rows]  # refuses floats, accepts numpy ints
        columns = ", ".join(f"t.{name}" for name in db.COLUMNS[kind].split(", "))
        sql = (
            f"SELECT j.value, {columns} FROM json_each(?) AS j "
            f"LEFT JOIN {kind} AS t ON t.row = j.value ORDER BY j.key"
        )
        with self._lock:
            found = self._conn.execute(sql, (json.dumps(wanted),)).fetchall()
            size = db.size(self._conn, kind)
        unknown = [values[0] for values in found if values[1] is None]
        if unknown:
            raise ValueError(
                f"unknown {kind} rows {db.preview(unknown)}; valid rows are 0..{size - 1}"
            )
        return [values[1:] for values in found]

    def captions_of_image(self, image_id: str) -> list[CaptionRecord]:
        """Live captions linked to `image_id`, by row (also for a deleted image)."""
        check_id(image_id, "image_id")
        sql = f"SELECT {db.COLUMNS['captions']} FROM captions WHERE image_id = ? AND deleted = 0"
        with self._lock:
            if db.unknown_ids(self._conn, "images", json.dumps([image_id]), live_only=False):
                raise ValueError(f"unknown image_id {image_id!r}")
            found = self._conn.execute(sql + " ORDER BY row", (image_id,)).fetchall()
        return [db.caption(values) for values in found]

    def live_mask(self, kind: Kind) -> np.ndarray:
        """(N,) bool, True where the row is not deleted; one indexed query."""
        db.check_kind(kind)
        with self._lock:
            size = db.size(self._conn, kind)
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
        db.check_kind(kind)
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
                db.copy_live(out._conn, self.path)
                counts = out.counts()
            os.replace(temporary, dest)
        finally:
            temporary.unlink(missing_ok=True)
        logger.info("wrote compacted metadata %s: %s", dest, counts)

    def checksum_rows(self) -> str:
        """sha256 hex of image ids then caption ids in row order (tombstones included)."""
        digest = hashlib.sha256()
        with self._lock:
            for kind, id_column in db.ID_COLUMN.items():
                digest.update(f"{kind}\n".encode())
                for (item_id,) in self._conn.execute(
                    f"SELECT {id_column} FROM {kind} ORDER BY row"
                ):
                    digest.update(json.dumps(item_id).encode() + b"\n")
        return digest.hexdigest()


# -- helpers ------------------------------------------------------------------------------
