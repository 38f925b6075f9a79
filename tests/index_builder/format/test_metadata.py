"""Tests of the metadata store: rows, links, tombstones, filters, compaction, read-only use."""

import os
import sqlite3
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from index_builder.format.metadata import CaptionRecord, ImageRecord, MetadataStore


@pytest.fixture
def store(tmp_path: Path):
    """Three images (one without uri or metadata) and four captions, one unlinked."""
    with MetadataStore.create(tmp_path / "metadata.sqlite") as opened:
        opened.add_images(
            [
                ImageRecord("a", "file:///g/a.jpg", {"split": "test", "n": 1, "tags": {"x": "y"}}),
                ImageRecord("b", "/g/b.jpg", {"split": "train", "n": 2, "ok": True}),
                ImageRecord("c"),
            ]
        )
        opened.add_captions(
            [
                CaptionRecord("a0", "a red circle", "a", {"lang": "en"}),
                CaptionRecord("a1", "un cercle rouge", "a", {"lang": "fr"}),
                CaptionRecord("b0", "two green triangles", "b"),
                CaptionRecord("free", "a caption without image"),
            ]
        )
        yield opened


def test_round_trip_after_reopen(store: MetadataStore) -> None:
    store.close()
    with MetadataStore.open(store.path) as reopened:
        images = reopened.images([2, 0])
        captions = reopened.captions([3, 1])
    assert images == [
        ImageRecord("c", None, None, row=2),
        ImageRecord("a", "file:///g/a.jpg", {"split": "test", "n": 1, "tags": {"x": "y"}}, row=0),
    ]
    assert captions[0] == CaptionRecord("free", "a caption without image", None, None, row=3)
    assert captions[1] == CaptionRecord("a1", "un cercle rouge", "a", {"lang": "fr"}, row=1)


def test_rows_are_dense_in_insertion_order(store: MetadataStore) -> None:
    assert store.add_images([ImageRecord("d"), ImageRecord("e", row=99)]) == [3, 4]
    assert store.add_captions(CaptionRecord(f"d{i}", "text", "d") for i in range(2)) == [4, 5]
    assert store.image_rows(["e", "a", "missing"]) == [4, 0, None]
    assert store.caption_rows(["d1", "free"]) == [5, 3]
    assert store.counts() == {"images": 5, "captions": 6, "live_images": 5, "live_captions": 6}


def test_unknown_rows_are_refused(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match=r"unknown images rows 7"):
        store.images([0, 7])
    assert store.images(np.array([1], dtype=np.int64))[0].image_id == "b"


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([ImageRecord("new"), ImageRecord("new")], "repeated in the input: 'new'"),
        ([ImageRecord("new"), ImageRecord("b")], "already in the store: 'b'"),
    ],
)
def test_duplicate_image_ids_are_refused_atomically(
    store: MetadataStore, batch: list[ImageRecord], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.add_images(batch)
    assert store.counts()["images"] == 3
    assert store.image_rows(["new"]) == [None]


def test_tombstoned_ids_stay_reserved(store: MetadataStore) -> None:
    store.delete_images(["c"])
    with pytest.raises(ValueError, match="already in the store: 'c'"):
        store.add_images([ImageRecord("c")])
    with pytest.raises(ValueError, match="already in the store: 'a0'"):
        store.add_captions([CaptionRecord("a0", "again")])


def test_captions_must_link_to_live_images(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match="unknown or deleted image_ids: 'nope'"):
        store.add_captions([CaptionRecord("x", "text", "nope")])
    store.delete_images(["b"])
    with pytest.raises(ValueError, match="'b'"):
        store.add_captions([CaptionRecord("y", "text", "b")])
    assert store.counts()["captions"] == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda: ImageRecord(""),
        lambda: ImageRecord("a", metadata=["not", "a", "dict"]),
        lambda: CaptionRecord("c", "   "),
        lambda: CaptionRecord("", "text"),
        lambda: CaptionRecord("c", "text", image_id=""),
    ],
)
def test_invalid_records_are_refused(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_unserialisable_metadata_names_the_record(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match=r"'bad'.*JSON"):
        store.add_images([ImageRecord("bad", metadata={"when": object()})])
    with pytest.raises(ValueError, match=r"'nan'.*JSON"):
        store.add_images([ImageRecord("nan", metadata={"score": float("nan")})])
    record = ImageRecord("ok")
    record.image_id = ""  # mutated after construction: caught when added
    with pytest.raises(ValueError, match="non-empty"):
        store.add_images([record])


def test_tombstones_are_honoured(store: MetadataStore) -> None:
    assert store.delete_images(["b", "c"]) == 2
    assert store.delete_images(["b"]) == 0
    assert store.image_rows(["a", "b", "c"]) == [0, None, None]
    np.testing.assert_array_equal(store.live_mask("images"), [True, False, False])
    assert store.filter_rows("images", {"n": [1, 2]}).tolist() == [0]
    assert store.images([1])[0].deleted
    # captions outlive their image until compaction
    assert [c.caption_id for c in store.captions_of_image("b")] == ["b0"]
    assert store.caption_rows(["b0"]) == [2]
    assert store.delete_captions(["a1"]) == 1
    assert [c.caption_id for c in store.captions_of_image("a")] == ["a0"]
    np.testing.assert_array_equal(store.live_mask("captions"), [True, False, True, True])
    assert store.counts() == {"images": 3, "captions": 4, "live_images": 1, "live_captions": 3}


def test_deleting_unknown_ids_lists_them_and_changes_nothing(store: MetadataStore) -> None:
    with pytest.raises(ValueError, match=r"'x1', 'x2'.*and 1 more"):
        store.delete_images(["a", *(f"x{i}" for i in range(1, 7))])
    assert store.counts()["live_images"] == 3
    with pytest.raises(ValueError, match="wrap it in a list"):
        store.delete_captions("a0")
    with pytest.raises(ValueError, match="unknown image_id 'zz'"):
        store.captions_of_image("zz")


@pytest.mark.parametrize(
    ("query", "rows"),
    [
        ({}, [0, 1, 2]),
        ({"split": "test"}, [0]),
        ({"split": ["test", "train"]}, [0, 1]),
        ({"split": "train", "n": 2}, [1]),
        ({"n": 1.0}, [0]),
        ({"n": "1"}, []),  # JSON types are kept apart
        ({"ok": True}, [1]),
        ({"n": True}, []),
        ({"tags.x": "y"}, [0]),
        ({"tags": "y"}, []),
        ({"split": []}, []),
        ({"missing-key_1": 1}, []),
    ],
)
def test_filter_semantics(store: MetadataStore, query: dict, rows: list[int]) -> None:
    found = store.filter_rows("images", query)
    assert found.dtype == np.int64
    assert found.tolist() == rows


def test_filter_on_captions(store: MetadataStore) -> None:
    assert store.filter_rows("captions", {"lang": ["fr", "de"]}).tolist() == [1]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"a'); DROP TABLE images; --": 1}, "invalid metadata key"),
        ({"a..b": 1}, "invalid metadata key"),
        ({"$.a": 1}, "invalid metadata key"),
        ({"n": None}, "must be str, int"),
        ({"n": {"x": 1}}, "must be str, int"),
        ({"n": float("inf")}, "finite"),
    ],
)
def test_filter_rejects_bad_keys_and_values(store: MetadataStore, query, message) -> None:
    with pytest.raises(ValueError, match=message):
        store.filter_rows("images", query)
    with pytest.raises(ValueError, match="kind must be"):
        store.filter_rows("videos", {})


def test_compaction_renumbers_live_rows_and_keeps_links(store: MetadataStore) -> None:
    store.add_images([ImageRecord("d", "/g/d.jpg", {"n": 4})])
    store.add_captions([CaptionRecord("d0", "a star", "d", {"k": [1, 2]})])
    store.delete_images(["b"])
    store.delete_captions(["a0"])
    np.testing.assert_array_equal(store.compact_mapping("images"), [0, -1, 1, 2])
    np.testing.assert_array_equal(store.compact_mapping("captions"), [-1, 0, 1, 2, 3])
    dest = store.path.parent / "compacted.sqlite"
    store.write_compacted(dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["compacted.sqlite", "metadata.sqlite"]
    with MetadataStore.open(dest) as compacted:
        assert compacted.counts() == {
            "images": 3, "captions": 4, "live_images": 3, "live_captions": 4
        }  # fmt: skip
        assert [r.image_id for r in compacted.images([0, 1, 2])] == ["a", "c", "d"]
        assert compacted.images([2])[0] == ImageRecord("d", "/g/d.jpg", {"n": 4}, row=2)
        captions = compacted.captions([0, 1, 2, 3])
        assert [(c.caption_id, c.image_id) for c in captions] == [
            ("a1", "a"), ("b0", None), ("free", None), ("d0", "d")
        ]  # fmt: skip
        assert captions[3].metadata == {"k": [1, 2]}
        assert [c.row for c in compacted.captions_of_image("d")] == [3]
    with pytest.raises(FileExistsError):
        store.write_compacted(dest)


def test_open_refuses_other_schema_versions_and_other_files(tmp_path: Path) -> None:
    path = tmp_path / "metadata.sqlite"
    MetadataStore.create(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    with pytest.raises(ValueError, match="schema version 99, this code reads version 1"):
        MetadataStore.open(path)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as raw:
        raw.execute("CREATE TABLE t (x)")
    raw.close()
    with pytest.raises(ValueError, match="not a CHAN metadata store"):
        MetadataStore.open(other)
    (tmp_path / "text.sqlite").write_text("hello, not a database at all" * 10)
    with pytest.raises(ValueError, match="not a CHAN metadata store"):
        MetadataStore.open(tmp_path / "text.sqlite")
    with pytest.raises(FileNotFoundError):
        MetadataStore.open(tmp_path / "absent.sqlite")
    with pytest.raises(FileExistsError):
        MetadataStore.create(path)


def test_read_only_open_refuses_writes(store: MetadataStore) -> None:
    store.close()
    with MetadataStore.open(store.path) as reader:
        with pytest.raises(PermissionError, match="readonly=False"):
            reader.add_images([ImageRecord("z")])
        with pytest.raises(PermissionError):
            reader.delete_images(["a"])
        assert reader.counts()["live_images"] == 3
    with MetadataStore.open(store.path, readonly=False) as writer:
        assert writer.delete_images(["a"]) == 1


def test_read_only_folder_opens_without_creating_files(store: MetadataStore) -> None:
    """Index folders may be mounted read-only (as root chmod does not bind, mode=ro still must)."""
    store.close()
    folder = store.path.parent
    store.path.chmod(stat.S_IRUSR)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with MetadataStore.open(store.path) as reader:
            assert reader.image_rows(["b"]) == [1]
            assert reader.filter_rows("images", {"split": "test"}).tolist() == [0]
            reader.live_mask("captions")
        assert [p.name for p in folder.iterdir()] == ["metadata.sqlite"]
    finally:
        folder.chmod(stat.S_IRWXU)
        store.path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            MetadataStore.open(store.path, readonly=False).add_images([ImageRecord("z")])


def test_reads_from_several_threads(store: MetadataStore) -> None:
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(50):
                assert store.image_rows(["c", "a"]) == [2, 0]
                assert store.live_mask("captions").sum() == 4
        except BaseException as error:  # handed back to the main thread
            errors.append(error)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_checksum_follows_ids_in_row_order(store: MetadataStore) -> None:
    before = store.checksum_rows()
    store.delete_images(["a"])
    assert store.checksum_rows() == before  # arrays keep tombstoned rows
    store.add_images([ImageRecord("z")])
    assert store.checksum_rows() != before


def test_bulk_insert_is_fast(tmp_path: Path) -> None:
    images = [ImageRecord(f"img{i}", f"/g/{i}.jpg", {"n": i}) for i in range(20_000)]
    captions = [CaptionRecord(f"cap{i}", "a caption", f"img{i // 2}") for i in range(20_000)]
    with MetadataStore.create(tmp_path / "metadata.sqlite") as created:
        start = time.perf_counter()
        created.add_images(images)
        created.add_captions(captions)
        elapsed_s = time.perf_counter() - start
        assert created.counts()["captions"] == 20_000
    assert elapsed_s < 2.0


def test_ids_match_exactly(store: MetadataStore) -> None:
    """A NUL (or any control character) never reaches SQLite, whose text functions stop
    at it: "a\\x00.png" must not find "a"."""
    assert store.image_rows(["a", "a\x00", "a\x00.png", "a\n", "\x7fa"]) == [0, None, None,
                                                                          None, None]  # fmt: skip
    assert store.caption_rows(["a0\x00x", "a0"]) == [None, 0]


@pytest.mark.parametrize("bad_id", ["a\x00b", "tab\there", "line\n", "del\x7f"])
def test_ids_with_control_characters_are_not_stored(store: MetadataStore, bad_id) -> None:
    with pytest.raises(ValueError, match="control character"):
        store.add_images([ImageRecord(bad_id)])
    with pytest.raises(ValueError, match="control character"):
        store.add_captions([CaptionRecord(bad_id, "text")])
