"""Scoring against loop-based float64 references."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.scoring import (
    FlatWords,
    Matching,
    best_regions,
    fill_padded_regions,
    plan_chunks,
    score_image_query,
    score_matrix,
    score_text_query,
)

POOLINGS = ["lse", "mean", "max", "sum"]


def reference_hard(regions, region_lens, words, word_lens, pooling, temperature=0.1):
    """Plain loops in float64: for every pair, every word's best valid region, pooled."""
    out = torch.empty(len(regions), len(words), dtype=torch.float64)
    for i in range(len(regions)):
        for c in range(len(words)):
            best = []
            for w in range(int(word_lens[c])):
                sims = [
                    float(regions[i, r].double() @ words[c, w].double())
                    for r in range(int(region_lens[i]))
                ]
                best.append(max(sims))
            if pooling == "lse":
                m = max(best)
                value = m / temperature + math.log(
                    sum(math.exp((b - m) / temperature) for b in best)
                )
            elif pooling == "mean":
                value = sum(best) / len(best)
            elif pooling == "max":
                value = max(best)
            else:
                value = sum(best)
            out[i, c] = value
    return out


def reference_soft(regions, region_lens, words, word_lens, smooth=9.0):
    """SCAN text-to-image attention, one pair at a time, float64, mean pooling."""
    out = torch.empty(len(regions), len(words), dtype=torch.float64)
    for i in range(len(regions)):
        v = regions[i, : int(region_lens[i])].double()
        for c in range(len(words)):
            t = words[c, : int(word_lens[c])].double()
            attn = F.leaky_relu(v @ t.T, 0.1)  # (K, L)
            attn = attn / (attn.norm(dim=1, keepdim=True) + 1e-8)  # across words
            attn = torch.softmax(attn * smooth, dim=0)  # over regions
            context = attn.T @ v  # (L, d)
            out[i, c] = F.cosine_similarity(context, t, dim=1).mean()
    return out


def random_batch(seed, n_img=5, n_cap=6, slots=7, max_words=9, dim=16, equal=False):
    gen = torch.Generator().manual_seed(seed)
    regions = F.normalize(
        torch.randn(n_img, slots, dim, generator=gen, dtype=torch.float64), dim=-1
    )
    words = F.normalize(
        torch.randn(n_cap, max_words, dim, generator=gen, dtype=torch.float64), dim=-1
    )
    if equal:
        region_lens = torch.full((n_img,), slots)
        word_lens = torch.full((n_cap,), max_words)
    else:
        region_lens = torch.randint(1, slots + 1, (n_img,), generator=gen)
        word_lens = torch.randint(1, max_words + 1, (n_cap,), generator=gen)
        region_lens[0], word_lens[0] = slots, max_words  # the maximum length occurs
    # garbage in padded slots must never matter
    regions[torch.arange(slots)[None] >= region_lens[:, None]] = 5.0
    words[torch.arange(max_words)[None] >= word_lens[:, None]] = -7.0
    return regions, region_lens, words, word_lens


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_assignment_matches_loop_reference(pooling, seed):
    regions, rl, words, wl = random_batch(seed)
    got = score_matrix(regions, rl, words, wl, Matching(pooling=pooling))
    expected = reference_hard(regions, rl, words, wl, pooling)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize(
    "shape",
    [
        dict(slots=1, max_words=5),  # one region
        dict(slots=6, max_words=1),  # one word
        dict(slots=4, max_words=4, equal=True),  # all lengths equal
        dict(n_img=1, n_cap=1),
    ],
)
def test_hard_assignment_edge_cases(pooling, shape):
    regions, rl, words, wl = random_batch(3, **shape)
    got = score_matrix(regions, rl, words, wl, Matching(pooling=pooling))
    torch.testing.assert_close(got, reference_hard(regions, rl, words, wl, pooling))


def test_padded_regions_never_win_even_when_larger():
    regions, rl, words, wl = random_batch(4)
    # make padded slots align perfectly with every word: they would win an unmasked max
    regions[1, int(rl[1]) :] = 0
    rl[1] = 2
    regions[1, 2:] = words[0, 0] * 10
    got = score_matrix(regions, rl, words, wl, Matching(pooling="max"))
    torch.testing.assert_close(got, reference_hard(regions, rl, words, wl, "max"))


@pytest.mark.parametrize("coding", ["hard", "soft"])
@pytest.mark.parametrize("chunk_bytes", [1, 3000, 20_000, 10**9])
def test_chunked_equals_unchunked(coding, chunk_bytes):
    regions, rl, words, wl = random_batch(5, n_img=11, n_cap=13)
    matching = Matching(coding=coding, pooling="lse")
    whole = score_matrix(regions, rl, words, wl, matching, max_chunk_bytes=10**12)
    chunked = score_matrix(regions, rl, words, wl, matching, max_chunk_bytes=chunk_bytes)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)


def test_plan_chunks_respects_bound():
    lens = torch.full((1000,), 12)
    images, ranges = plan_chunks(5000, 36, lens, 1024, "hard", 64 * 2**20)
    widest = max(int(lens[a:b].sum()) for a, b in ranges)
    assert images * 36 * widest * 4 <= 64 * 2**20
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(a < b for a, b in ranges)
    assert all(ranges[k][1] == ranges[k + 1][0] for k in range(len(ranges) - 1))


def test_soft_assignment_matches_scan_reference():
    regions, rl, words, wl = random_batch(6)
    got = score_matrix(regions, rl, words, wl, Matching(coding="soft", pooling="mean"))
    # eps conventions of the two normalisations differ by ~1e-8 relative
    torch.testing.assert_close(got, reference_soft(regions, rl, words, wl), rtol=0, atol=1e-7)


def test_bf16_path_is_close_to_fp32():
    regions, rl, words, wl = random_batch(7, n_img=20, n_cap=20, dim=64)
    regions, words = regions.float(), words.float()
    fp32 = score_matrix(regions, rl, words, wl, Matching(pooling="mean"))
    bf16 = score_matrix(
        regions, rl, words, wl, Matching(pooling="mean"), compute_dtype=torch.bfloat16
    )
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 2e-2
    assert not torch.equal(bf16, fp32)  # it really ran in lower precision


def test_gradients_flow_through_hard_scores():
    regions, rl, words, wl = random_batch(8)
    regions.requires_grad_(True)
    words.requires_grad_(True)
    score_matrix(regions, rl, words, wl, Matching()).sum().backward()
    assert regions.grad.abs().sum() > 0 and words.grad.abs().sum() > 0
    # padded slots get no gradient: they are never part of the score
    padded = torch.arange(regions.shape[1])[None] >= rl[:, None]
    assert regions.grad[padded].abs().sum() == 0
    assert words.grad[torch.arange(words.shape[1])[None] >= wl[:, None]].abs().sum() == 0


def test_fill_padded_regions_copies_first_region():
    regions = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    filled = fill_padded_regions(regions, torch.tensor([3, 1]))
    assert torch.equal(filled[0], regions[0])
    assert torch.equal(filled[1], regions[1, :1].expand(3, 2))
    assert fill_padded_regions(regions, None) is regions


def test_flat_words_round_trip_and_slice():
    regions, rl, words, wl = random_batch(9)
    flat = FlatWords.from_padded(words, wl)
    assert flat.vectors.shape[0] == int(wl.sum())
    assert torch.equal(flat.lengths, wl)
    part = flat.slice(2, 4)
    assert torch.equal(part.vectors[: int(wl[2])], words[2, : int(wl[2])])
    whole = score_matrix(regions, rl, flat, matching=Matching())
    torch.testing.assert_close(score_matrix(regions, rl, part, matching=Matching()), whole[:, 2:4])


def test_best_regions_names_the_winning_region():
    regions = torch.eye(4)[:3]  # regions are the first three unit vectors
    words = torch.tensor([[0.0, 0.9, 0.1, 0.0], [0.2, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    index, values = best_regions(regions, 3, words)
    assert index.tolist() == [1, 0, 2]
    torch.testing.assert_close(values, torch.tensor([0.9, 0.2, 1.0]))


def test_invalid_lengths_are_rejected():
    regions, rl, words, wl = random_batch(10)
    with pytest.raises(ValueError, match="region counts"):
        score_matrix(regions, torch.zeros_like(rl), words, wl)
    with pytest.raises(ValueError, match="word counts"):
        score_matrix(regions, rl, words, wl + 100)


@pytest.mark.parametrize("coding", ["hard", "soft"])
def test_single_query_fast_paths_equal_the_matrix(coding):
    regions, rl, words, wl = random_batch(11, n_img=9, n_cap=8)
    matching = Matching(coding=coding, pooling="lse")
    whole = score_matrix(regions, rl, words, wl, matching)
    flat = FlatWords.from_padded(words, wl)
    for c in range(8):
        got = score_text_query(words[c, : int(wl[c])], regions, rl, matching, max_chunk_bytes=4000)
        torch.testing.assert_close(got, whole[:, c], rtol=0, atol=1e-12)
    for i in range(9):
        got = score_image_query(regions[i, : int(rl[i])], flat, matching, max_chunk_bytes=4000)
        torch.testing.assert_close(got, whole[i], rtol=0, atol=1e-12)


def test_chunked_scores_with_autograd_equal_those_without():
    regions, rl, words, wl = random_batch(12, n_img=11, n_cap=13)
    with torch.no_grad():
        plain = score_matrix(regions, rl, words, wl, Matching(), max_chunk_bytes=3000)
    regions.requires_grad_(True)
    tracked = score_matrix(regions, rl, words, wl, Matching(), max_chunk_bytes=3000)
    assert tracked.requires_grad
    torch.testing.assert_close(tracked.detach(), plain, rtol=0, atol=0)


def test_global_coding_is_the_cosine_of_mean_pooled_sides():
    regions, region_lens, words, word_lens = random_batch(3, dim=16)
    got = score_matrix(regions, region_lens, words, word_lens, Matching(coding="global"))
    want = torch.empty(regions.shape[0], words.shape[0], dtype=torch.float64)
    for i in range(regions.shape[0]):
        image = regions[i, : region_lens[i]].double().mean(0)
        for j in range(words.shape[0]):
            caption = words[j, : word_lens[j]].double().mean(0)
            want[i, j] = F.cosine_similarity(image, caption, dim=0)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_soft_assignment_gradients_are_finite_with_zero_padded_regions():
    regions, region_lens, words, word_lens = random_batch(4)
    regions = regions * (torch.arange(regions.shape[1])[None, :, None] < region_lens[:, None, None])
    regions.requires_grad_(True)
    scores = score_matrix(regions, region_lens, words, word_lens, Matching(coding="soft"))
    scores.sum().backward()
    assert torch.isfinite(regions.grad).all()
