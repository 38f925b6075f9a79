"""Losses against hand-computed values."""

import pytest
import torch

from model.chan import create_model
from model.losses import hinge_triplet_loss, info_nce_loss
from model.vocab import VocabTokenizer
from tests.conftest import CAPTIONS

SCORES = torch.tensor([[0.9, 0.5, 0.88], [0.2, 0.6, 0.3], [0.1, 0.62, 0.7]])


def test_hinge_sum_of_violations_by_hand():
    # margin 0.05. Image rows (caption negatives): row0: 0.5-0.9+.05<0, 0.88-0.9+.05=0.03;
    # row1: 0.2-0.6+.05<0, 0.3-0.6+.05<0; row2: 0.1-0.7<0, 0.62-0.7+.05=-0.03<0. Rows: 0.03.
    # Caption columns (image negatives): col0: 0.2-0.9<0, 0.1-0.9<0; col1: 0.5-0.6+.05=-0.05
    # -> 0, 0.62-0.6+.05=0.07; col2: 0.88-0.7+.05=0.23, 0.3-0.7<0 -> 0.30. Total 0.33.
    loss = hinge_triplet_loss(SCORES, margin=0.05, hardest_negative=False)
    torch.testing.assert_close(loss, torch.tensor(0.33))


def test_hinge_hardest_negative_by_hand():
    # margin 0.05: rows: max 0.03, 0, 0 ; columns: max 0, 0.07, 0.23 -> 0.33. Margin 0.2:
    # rows: 0.18 (0.88 vs 0.9), 0 (0.3+.2-.6=-0.1), 0.12 (0.62+.2-.7) ; columns: 0 (0.2+.2-.9),
    # 0.22 (0.62+.2-.6), 0.38 (0.88+.2-.7) -> 0.9
    torch.testing.assert_close(hinge_triplet_loss(SCORES, 0.05, True), torch.tensor(0.33))
    torch.testing.assert_close(hinge_triplet_loss(SCORES, 0.2, True), torch.tensor(0.9))
    # summing all violations at margin 0.2 counts more than the hardest one alone
    assert hinge_triplet_loss(SCORES, 0.2, False) > hinge_triplet_loss(SCORES, 0.2, True)


def test_info_nce_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # each row and column: -log(e^2 / (e^2 + e^0))
    one = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 1))
    torch.testing.assert_close(info_nce_loss(s, t), 2 * one)


def test_loss_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        hinge_triplet_loss(torch.zeros(2, 3))


@pytest.mark.parametrize("loss_fn", [hinge_triplet_loss, info_nce_loss])
def test_gradients_reach_both_encoders(vocab, loss_fn):
    torch.manual_seed(0)
    model = create_model("tiny", vocab_size=len(vocab))
    ids, lens = VocabTokenizer(vocab)(CAPTIONS)
    regions = torch.randn(len(CAPTIONS), 6, model.config.img_dim)
    region_lens = torch.tensor([6, 3, 5, 1, 6])
    loss = loss_fn(model(regions, region_lens, ids, lens))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
