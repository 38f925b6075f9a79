"""Shared pieces of the model tests: a reference-format (official) BiGRU checkpoint."""

import argparse
import json

import torch

E, D, WORD_DIM, HEADS, SLOTS = 32, 20, 12, 8, 36
WORDS = [
    "<pad>",
    "<start>",
    "<end>",
    "<unk>",
    "a",
    "red",
    "circle",
    "blue",
    "square",
    "left",
    "of",
    "two",
    "green",
    "triangles",
    "above",
    ".",
]


def rand(*shape):
    return torch.randn(*shape) * 0.3


def official_bigru_parts(vocab_rows):
    """State dicts with the reference key names and shapes, random weights."""
    img = {
        "fc.weight": rand(E, D),
        "fc.bias": rand(E),
        "feedforward.ln.weight": 1 + rand(E),
        "feedforward.ln.bias": rand(E),
        "feedforward.attn.in_proj_weight": rand(3 * E, E),
        "feedforward.attn.in_proj_bias": rand(3 * E),
        "feedforward.attn.out_proj.weight": rand(E, E),
        "feedforward.attn.out_proj.bias": rand(E),
    }
    txt = {"embed.weight": rand(vocab_rows, WORD_DIM), "fc.weight": rand(E, E), "fc.bias": rand(E)}
    for suffix in ("", "_reverse"):
        txt[f"rnn.weight_ih_l0{suffix}"] = rand(3 * E, WORD_DIM)
        txt[f"rnn.weight_hh_l0{suffix}"] = rand(3 * E, E)
        txt[f"rnn.bias_ih_l0{suffix}"] = rand(3 * E)
        txt[f"rnn.bias_hh_l0{suffix}"] = rand(3 * E)
    return [img, txt, {}, {}]


def options(**overrides):
    base = dict(
        embed_size=E,
        img_dim=D,
        precomp_enc_type="selfattention",
        text_enc_type="bigru",
        vocab_size=len(WORDS) + 1,
        word_dim=WORD_DIM,
        num_layers=1,
        coding_type="VHACoding",
        pooling_type="LSEPooling",
        belta=0.1,
        no_imgnorm=False,
        no_txtnorm=False,
        margin=0.05,
        data_name="f30k",
    )
    base.update(overrides)
    return argparse.Namespace(**base)


def write_official(path, parts, opt):
    torch.save({"epoch": 24, "model": parts, "best_rsum": 512.3, "opt": opt, "Eiters": 1000}, path)
    return path


def write_vocab(path):
    path.write_text(
        json.dumps(
            {
                "word2idx": {w: i for i, w in enumerate(WORDS)},
                "idx2word": {str(i): w for i, w in enumerate(WORDS)},
                "idx": len(WORDS),
            }
        )
    )
    return path


# --- independent reference forward ------------------------------------------------
