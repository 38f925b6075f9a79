"""Encoder behaviour: padding, packing, GloVe initialisation, official-compat attention."""

import pytest
import torch

from model.chan import create_model
from model.encoders import load_glove
from model.vocab import VocabTokenizer
from tests.conftest import CAPTIONS


def test_glove_initialises_known_words(tmp_path, vocab):
    model = create_model("tiny", vocab_size=len(vocab), word_dim=3)
    glove = tmp_path / "glove.txt"
    glove.write_text("red 1 2 3\ncircle 0.5 0.5 0.5\nunused 9 9 9\nleftof 7 7 7\n")
    before = model.text_encoder.embed.weight.detach().clone()
    found = load_glove(model.text_encoder.embed, vocab.word2idx, glove)
    weight = model.text_encoder.embed.weight
    assert found == 2
    assert weight[vocab("red")].tolist() == [1, 2, 3]
    assert weight[vocab("circle")].tolist() == [0.5, 0.5, 0.5]
    assert torch.equal(weight[vocab("blue")], before[vocab("blue")])


def test_glove_dimension_mismatch_is_explained(tmp_path, vocab):
    model = create_model("tiny", vocab_size=len(vocab), word_dim=3)
    glove = tmp_path / "glove.txt"
    glove.write_text("red 1 2\n")
    with pytest.raises(ValueError, match="set word_dim"):
        load_glove(model.text_encoder.embed, vocab.word2idx, glove)


def test_bigru_caption_is_independent_of_batch_padding(vocab):
    model = create_model("tiny", vocab_size=len(vocab)).eval()
    tok = VocabTokenizer(vocab)
    alone = model.encode_texts(*tok([CAPTIONS[1]]))
    batched = model.encode_texts(*tok(CAPTIONS))
    torch.testing.assert_close(batched[1, : alone.shape[1]], alone[0], rtol=0, atol=1e-6)
    assert batched[1, alone.shape[1] :].abs().sum() == 0


@pytest.mark.parametrize("compat", [False, True])
def test_region_padding_content_never_matters(compat):
    torch.manual_seed(0)
    model = create_model("tiny", vocab_size=10, official_compat=compat).eval()
    regions = torch.randn(2, 5, 16)
    lens = torch.tensor([5, 2])
    noisy = regions.clone()
    noisy[1, 2:] = float("nan")
    torch.testing.assert_close(model.encode_images(noisy, lens), model.encode_images(regions, lens))


def test_masked_attention_ignores_padding_width_but_compat_does_not():
    torch.manual_seed(0)
    regions = torch.randn(1, 3, 16)
    for compat, same in ((False, True), (True, False)):
        model = create_model("tiny", vocab_size=10, official_compat=compat).eval()
        short = model.encode_images(regions, torch.tensor([3]))
        padded = model.encode_images(
            torch.cat([regions, torch.zeros(1, 4, 16)], 1), torch.tensor([3])
        )
        assert torch.allclose(short, padded[:, :3], atol=1e-6) is same


def test_wrong_feature_dimension_is_rejected():
    model = create_model("tiny", vocab_size=10)
    with pytest.raises(ValueError, match=r"\(B, K, 16\)"):
        model.encode_images(torch.zeros(2, 3, 15))
