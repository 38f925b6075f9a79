"""Own checkpoint format: save -> load -> identical scores; bad directories rejected."""

import json

import pytest
import torch

from model.chan import create_model
from model.checkpoint import checkpoint_hash, load_checkpoint, save_checkpoint
from model.vocab import BertTokenizer, VocabTokenizer
from tests.conftest import CAPTIONS


def scores_of(model, tokenizer, regions, region_lens):
    with torch.no_grad():
        ids, lens = tokenizer(CAPTIONS)
        return model.score(
            model.encode_images(regions, region_lens),
            region_lens,
            model.encode_texts(ids, lens),
            lens,
        )


@pytest.fixture
def regions():
    torch.manual_seed(1)
    return torch.randn(4, 6, 16), torch.tensor([6, 2, 4, 1])


def test_bigru_round_trip_gives_identical_scores(tmp_path, vocab, regions):
    torch.manual_seed(0)
    model = create_model("tiny", vocab_size=len(vocab)).eval()
    spec = {"name": "demo", "k": 6, "dim": 16}
    out = save_checkpoint(
        model, tmp_path / "ckpt", vocab=vocab, extractor=spec, metadata={"epoch": 3}
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    loaded = load_checkpoint(out)
    assert loaded.config == model.config and loaded.extractor == spec
    assert loaded.metadata == {"epoch": 3}
    expected = scores_of(model, VocabTokenizer(vocab), *regions)
    torch.testing.assert_close(
        scores_of(loaded.model, loaded.tokenizer, *regions), expected, rtol=0, atol=0
    )


def test_bert_round_trip_gives_identical_scores(tmp_path, tiny_bert_dir, regions):
    torch.manual_seed(0)
    model = create_model(
        "tiny",
        text_encoder="bert",
        bert_dir=str(tiny_bert_dir),
        region_encoder="basic",
        pooling="mean",
    ).eval()
    tokenizer = BertTokenizer(tiny_bert_dir)
    out = save_checkpoint(model, tmp_path / "ckpt", bert_tokenizer=tokenizer)
    assert (out / "text_encoder" / "config.json").is_file()
    loaded = load_checkpoint(out)
    expected = scores_of(model, tokenizer, *regions)
    torch.testing.assert_close(
        scores_of(loaded.model, loaded.tokenizer, *regions), expected, rtol=0, atol=0
    )


def test_overwrite_replaces_atomically_and_hash_follows_weights(tmp_path, vocab):
    torch.manual_seed(0)
    model = create_model("tiny", vocab_size=len(vocab))
    path = save_checkpoint(model, tmp_path / "ckpt", vocab=vocab)
    first = checkpoint_hash(path)
    with torch.no_grad():
        model.region_encoder.proj.bias.add_(1.0)
    save_checkpoint(model, path, vocab=vocab)
    assert checkpoint_hash(path) != first
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_missing_and_corrupt_checkpoints_are_rejected(tmp_path, vocab):
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        load_checkpoint(tmp_path)
    torch.manual_seed(0)
    path = save_checkpoint(create_model("tiny", vocab_size=len(vocab)), tmp_path / "c", vocab=vocab)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint(path)
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 99
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version 99"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_rejected(tmp_path, vocab):
    torch.manual_seed(0)
    path = save_checkpoint(create_model("tiny", vocab_size=len(vocab)), tmp_path / "c", vocab=vocab)
    config = json.loads((path / "config.json").read_text())
    config["model"]["embed_size"] = 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match its config"):
        load_checkpoint(path)


def test_vocab_must_match_the_model(tmp_path, vocab):
    model = create_model("tiny", vocab_size=len(vocab) + 1)
    with pytest.raises(ValueError, match="vocabulary has"):
        save_checkpoint(model, tmp_path / "c", vocab=vocab)
