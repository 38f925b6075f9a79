"""Word vocabulary (SCAN / official CHAN json format) and caption tokenisers."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from nltk.tokenize import NLTKWordTokenizer

from model.io import atomic_write_text

logger = logging.getLogger(__name__)

PAD, START, END, UNK, MASK = "<pad>", "<start>", "<end>", "<unk>", "<mask>"
SPECIALS = (PAD, START, END, UNK)

_word_tokenizer = NLTKWordTokenizer()
# A sentence ends at . ! or ? followed by space, unless the dot closes a one-letter
# token or an abbreviation with inner dots ("e.g.", "u.s."). NLTK's own sentence
# splitter needs downloaded data; captions are almost always one sentence anyway.
_SENTENCE_END = re.compile(r"(?<![\s.][a-z])(?<!\.[a-z]\.)(?<=[.!?])\s+")


def tokenize(caption: str) -> list[str]:
    """Lower-case Treebank-style word tokens, as the official BiGRU pipeline makes them."""
    tokens: list[str] = []
    for sentence in _SENTENCE_END.split(caption.lower().strip()):
        tokens.extend(_word_tokenizer.tokenize(sentence))
    return tokens


class Vocabulary:
    """Word <-> index map. Specials first: <pad>=0, <start>=1, <end>=2, <unk>=3."""

    def __init__(self, words: Sequence[str]) -> None:
        self.idx2word: list[str] = list(words)
        self.word2idx: dict[str, int] = {w: i for i, w in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise ValueError("vocabulary words must be unique")
        if tuple(self.idx2word[:4]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(SPECIALS)}")

    def __len__(self) -> int:
        return len(self.idx2word)

    def __call__(self, word: str) -> int:
        return self.word2idx.get(word, self.word2idx[UNK])

    def with_mask(self) -> Vocabulary:
        """The vocabulary with <mask> appended (as the official loader does), or itself."""
        return self if MASK in self.word2idx else Vocabulary([*self.idx2word, MASK])

    @classmethod
    def build(cls, captions: Iterable[str], threshold: int = 4) -> Vocabulary:
        """Words seen at least `threshold` times, in order of first appearance, + <mask>."""
        counts: Counter[str] = Counter()
        for caption in captions:
            counts.update(tokenize(caption))
        words = [w for w, n in counts.items() if n >= threshold and w not in SPECIALS and w != MASK]
        return cls([*SPECIALS, *words, MASK])

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read the json format ({word2idx, idx2word, idx}); <mask> is appended if absent."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            word2idx = data["word2idx"]
        except FileNotFoundError:
            raise FileNotFoundError(f"vocabulary file {path} not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a vocabulary json ({{word2idx, idx2word, idx}}): {exc}"
            ) from None
        words = sorted(word2idx, key=word2idx.__getitem__)
        if [word2idx[w] for w in words] != list(range(len(words))):
            raise ValueError(f"{path}: word indices must be 0..{len(words) - 1} without gaps")
        return cls(words).with_mask()

    def save(self, path: str | Path) -> None:
        """Write the json format, atomically (temporary file, then rename)."""
        data = {
            "word2idx": self.word2idx,
            "idx2word": {str(i): w for i, w in enumerate(self.idx2word)},
            "idx": len(self.idx2word),
        }
        atomic_write_text(Path(path), json.dumps(data, ensure_ascii=False))


class CaptionTokenizer(Protocol):
    """Turns raw captions into padded id tensors for a text encoder."""

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, L) int64 padded with 0, lens (B,) int64."""
        ...


def pad_ids(
    sequences: Sequence[Sequence[int]], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into (B, L_max) and their lengths (B,)."""
    lens = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    ids = torch.full((len(sequences), int(lens.max()) if len(sequences) else 0), pad_id)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
    return ids, lens


class VocabTokenizer:
    """<start> + word tokens + <end>, unknown words -> <unk>."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab

    def ids(self, caption: str) -> list[int]:
        return [self.vocab(START), *(self.vocab(t) for t in tokenize(caption)), self.vocab(END)]

    def tokens(self, caption: str) -> list[str]:
        """The token strings behind ids(caption), one per word embedding."""
        return [START, *tokenize(caption), END]

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_ids([self.ids(c) for c in captions])


class BertTokenizer:
    """The model directory's own tokenizer: [CLS] + word pieces + [SEP]."""

    def __init__(self, model_dir: str | Path, max_length: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.max_length = max_length

    def ids(self, caption: str) -> list[int]:
        ids = self.tokenizer(caption, add_special_tokens=True)["input_ids"]
        if self.max_length and len(ids) > self.max_length:
            logger.warning("caption of %d tokens cut to %d", len(ids), self.max_length)
            ids = [*ids[: self.max_length - 1], ids[-1]]
        return ids

    def tokens(self, caption: str) -> list[str]:
        """The word pieces behind ids(caption), one per word embedding."""
        return self.tokenizer.convert_ids_to_tokens(self.ids(caption))

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.tokenizer.pad_token_id or 0
        return pad_ids([self.ids(c) for c in captions], pad)

    def save(self, directory: str | Path) -> None:
        self.tokenizer.save_pretrained(str(directory))
