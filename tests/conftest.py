"""Shared fixtures: tiny models and data built inside the tests, nothing downloaded."""

import io
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from model.vocab import Vocabulary

CAPTIONS = [
    "a red circle left of a blue square",
    "two green triangles",
    "a blue square above a red circle.",
    "the small yellow star is next to a big green circle",
    "three red squares and a blue triangle",
]

BERT_WORDS = (
    "a the red blue green yellow circle square triangle star left right of above below "
    "next to and two three small big is . , ##s ##es"
).split()


def write_tiny_bert(directory: Path, hidden_size: int = 24, seed: int = 0) -> Path:
    """A randomly initialised BERT with its WordPiece tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *BERT_WORDS]) + "\n"
    )
    (directory / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "BertTokenizer", "do_lower_case": true}'
    )
    AutoTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=5 + len(BERT_WORDS),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.build(CAPTIONS, threshold=1)


# image bytes for the loaders' and the service's refusal tests
def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height, with almost no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )
