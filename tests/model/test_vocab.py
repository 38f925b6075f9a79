"""Vocabulary and tokeniser round trips."""

import json

import pytest

from model.vocab import MASK, BertTokenizer, VocabTokenizer, Vocabulary, tokenize


def test_tokenize_is_treebank_style_and_lower_case():
    assert tokenize("A Man's red-jacket, riding.") == [
        "a",
        "man",
        "'s",
        "red-jacket",
        ",",
        "riding",
        ".",
    ]
    # a second sentence is split so its full stop is its own token, not glued to the word
    assert tokenize("Two dogs. A cat sits!") == ["two", "dogs", ".", "a", "cat", "sits", "!"]
    # abbreviations with inner dots do not end a sentence
    assert tokenize("e.g. the u.s. flag") == ["e.g.", "the", "u.s.", "flag"]


def test_build_applies_threshold_and_keeps_first_seen_order():
    vocab = Vocabulary.build(["b a a", "c a b", "d"], threshold=2)
    assert vocab.idx2word == ["<pad>", "<start>", "<end>", "<unk>", "b", "a", MASK]
    assert vocab("d") == vocab("<unk>") == 3


def test_save_load_round_trip_in_official_format(tmp_path, vocab):
    path = tmp_path / "vocab.json"
    vocab.save(path)
    data = json.loads(path.read_text())
    assert set(data) == {"word2idx", "idx2word", "idx"}
    assert data["idx2word"]["0"] == "<pad>" and data["idx"] == len(vocab)
    loaded = Vocabulary.load(path)
    assert loaded.idx2word == vocab.idx2word


def test_official_vocab_gets_mask_appended(tmp_path):
    words = ["<pad>", "<start>", "<end>", "<unk>", "dog", "runs"]
    path = tmp_path / "f30k_precomp_vocab.json"
    path.write_text(
        json.dumps(
            {
                "word2idx": {w: i for i, w in enumerate(words)},
                "idx2word": {str(i): w for i, w in enumerate(words)},
                "idx": len(words),
            }
        )
    )
    vocab = Vocabulary.load(path)
    assert len(vocab) == 7 and vocab(MASK) == 6
    assert VocabTokenizer(vocab).ids("The dog runs") == [1, 3, 4, 5, 2]


def test_vocab_tokenizer_pads_with_zero(vocab):
    ids, lens = VocabTokenizer(vocab)(["two green triangles", "a"])
    assert lens.tolist() == [5, 3]
    assert ids.shape == (2, 5) and ids[1, 3:].tolist() == [0, 0]
    assert ids[0, 0] == vocab("<start>") and ids[0, 4] == vocab("<end>")


@pytest.mark.parametrize(
    "content", ["not json", '{"idx": 3}', '{"word2idx": {"<pad>": 0, "x": 2}}']
)
def test_bad_vocab_files_are_rejected(tmp_path, content):
    path = tmp_path / "v.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        Vocabulary.load(path)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        Vocabulary.load(tmp_path / "nope.json")


def test_bert_tokenizer_from_model_dir(tiny_bert_dir):
    tokenizer = BertTokenizer(tiny_bert_dir)
    ids, lens = tokenizer(["A red circle.", "two big stars"])
    pieces = tokenizer.tokenizer.convert_ids_to_tokens(ids[1, : int(lens[1])].tolist())
    assert pieces == ["[CLS]", "two", "big", "star", "##s", "[SEP]"]
    assert ids[0, int(lens[0]) :].eq(0).all()
