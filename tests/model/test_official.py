"""Import of reference-implementation checkpoints, checked against an independent
re-computation of the reference forward pass written here from its description."""

import collections
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.checkpoint import load_checkpoint
from model.official import OfficialFormatError, import_official
from model.vocab import VocabTokenizer
from tests.conftest import CAPTIONS
from tests.model.conftest import (
    HEADS,
    SLOTS,
    WORDS,
    D,
    E,
    official_bigru_parts,
    options,
    rand,
    write_official,
    write_vocab,
)


def l2n(x):
    return x / (x.norm(dim=-1, keepdim=True) + 1e-8)


def ref_images(img, regions):
    """fc on every slot, h + MHA(LN(h)) over all slots without a mask, l2norm."""
    h = regions @ img["fc.weight"].T + img["fc.bias"]
    q = F.layer_norm(h, (E,), img["feedforward.ln.weight"], img["feedforward.ln.bias"])
    w, b = img["feedforward.attn.in_proj_weight"], img["feedforward.attn.in_proj_bias"]
    qs, ks, vs = (q @ w[i * E : (i + 1) * E].T + b[i * E : (i + 1) * E] for i in range(3))
    dh = E // HEADS
    heads = []
    for k in range(HEADS):
        sl = slice(k * dh, (k + 1) * dh)
        att = torch.softmax(qs[..., sl] @ ks[..., sl].transpose(-1, -2) / math.sqrt(dh), dim=-1)
        heads.append(att @ vs[..., sl])
    attn = (
        torch.cat(heads, -1) @ img["feedforward.attn.out_proj.weight"].T
        + img["feedforward.attn.out_proj.bias"]
    )
    return l2n(h + attn)


def gru_direction(txt, x, suffix):
    """One GRU direction over a sequence x (T, W), PyTorch's gate equations."""
    wi, wh = txt[f"rnn.weight_ih_l0{suffix}"], txt[f"rnn.weight_hh_l0{suffix}"]
    bi, bh = txt[f"rnn.bias_ih_l0{suffix}"], txt[f"rnn.bias_hh_l0{suffix}"]
    h, out = torch.zeros(E), []
    for t in range(x.shape[0]):
        gi, gh = wi @ x[t] + bi, wh @ h + bh
        r = torch.sigmoid(gi[:E] + gh[:E])
        z = torch.sigmoid(gi[E : 2 * E] + gh[E : 2 * E])
        n = torch.tanh(gi[2 * E :] + r * gh[2 * E :])
        h = (1 - z) * n + z * h
        out.append(h)
    return torch.stack(out)


def ref_caption(txt, ids):
    x = txt["embed.weight"][torch.tensor(ids)]
    fwd = gru_direction(txt, x, "")
    bwd = gru_direction(txt, x.flip(0), "_reverse").flip(0)
    return l2n((fwd + bwd) / 2)


def ref_score(img_emb, n_regions, cap_emb, pooling, belta=0.1):
    best = (cap_emb @ img_emb[:n_regions].T).amax(dim=1)  # word -> its best valid region
    if pooling == "LSEPooling":
        return torch.logsumexp(best / belta, dim=0)
    return best.mean()


def ref_ids(caption):
    """<start> + lower-case Treebank tokens + <end> with the reference vocab."""
    from nltk.tokenize import NLTKWordTokenizer

    index = {w: i for i, w in enumerate(WORDS)}
    tokens = NLTKWordTokenizer().tokenize(caption.lower())
    return [1, *(index.get(t, 3) for t in tokens), 2]


# --- tests --------------------------------------------------------------------------


@pytest.fixture
def bigru_official(tmp_path):
    torch.manual_seed(0)
    parts = official_bigru_parts(len(WORDS) + 1)
    return (
        write_official(tmp_path / "model_best.pth", parts, options()),
        write_vocab(tmp_path / "f30k_precomp_vocab.json"),
        parts,
    )


def test_bigru_selfattention_lse_matches_reference(tmp_path, bigru_official):
    ckpt, vocab, parts = bigru_official
    loaded = load_checkpoint(import_official(ckpt, tmp_path / "own", vocab_path=vocab))
    assert loaded.config.official_compat and loaded.config.pooling == "lse"
    torch.manual_seed(1)
    counts = torch.tensor([36, 20, 7, 1])  # fewer than 36 regions: zero-padded slots
    regions = torch.randn(4, SLOTS, D) * (
        torch.arange(SLOTS)[None, :, None] < counts[:, None, None]
    )
    with torch.no_grad():
        img_emb = loaded.model.encode_images(regions, counts)
        cap_emb, cap_lens = loaded.encode_captions(CAPTIONS)
        got = loaded.model.score(img_emb, counts, cap_emb, cap_lens)
    ref_img = ref_images(parts[0], regions)
    expected = torch.empty(4, len(CAPTIONS))
    for c, caption in enumerate(CAPTIONS):
        ids = ref_ids(caption)
        assert VocabTokenizer(loaded.tokenizer.vocab).ids(caption) == ids
        ref_cap = ref_caption(parts[1], ids)
        for i in range(4):
            expected[i, c] = ref_score(ref_img[i], int(counts[i]), ref_cap, "LSEPooling")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_bert_basic_mean_matches_reference(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(2)
    bert = BertModel.from_pretrained(str(tiny_bert_dir)).eval()
    hidden = bert.config.hidden_size
    txt = {f"bert.{k}": v for k, v in bert.state_dict().items()}
    txt["bert.embeddings.position_ids"] = torch.arange(64)[None]  # older transformers kept it
    txt.update({"linear.weight": rand(E, hidden), "linear.bias": rand(E)})
    img = {"fc.weight": rand(E, D), "fc.bias": rand(E)}
    opt = options(precomp_enc_type="basic", text_enc_type="bert", pooling_type="MeanPooling")
    ckpt = write_official(tmp_path / "bert.pth", [img, txt, {}, {}], opt)
    loaded = load_checkpoint(import_official(ckpt, tmp_path / "own", bert_dir=tiny_bert_dir))
    counts = torch.tensor([36, 11])
    regions = torch.randn(2, SLOTS, D)
    with torch.no_grad():
        got = loaded.model.score(
            loaded.model.encode_images(regions, counts), counts, *loaded.encode_captions(CAPTIONS)
        )
        tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
        img_emb = l2n(regions @ img["fc.weight"].T + img["fc.bias"])
        expected = torch.empty(2, len(CAPTIONS))
        for c, caption in enumerate(CAPTIONS):
            pieces = tokenizer.tokenize(caption)  # basic tokenizer + WordPiece
            ids = torch.tensor([tokenizer.convert_tokens_to_ids(["[CLS]", *pieces, "[SEP]"])])
            states = bert(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            cap = l2n(states @ txt["linear.weight"].T + txt["linear.bias"])
            for i in range(2):
                expected[i, c] = ref_score(img_emb[i], int(counts[i]), cap, "MeanPooling")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p[0].pop("feedforward.ln.bias"), "missing key img_enc.feedforward.ln.bias"),
        (
            lambda p: p[1].__setitem__("rnn.weight_ih_l1", torch.zeros(1)),
            "unexpected key txt_enc.rnn.weight_ih_l1",
        ),
        (
            lambda p: p[0].__setitem__("fc.weight", torch.zeros(E, D + 1)),
            r"shape mismatch at img_enc.fc.weight",
        ),
        (lambda p: p[2].__setitem__("extra", torch.zeros(1)), "unexpected key sim_enc.extra"),
    ],
)
def test_bad_keys_are_named(tmp_path, bigru_official, mutate, message):
    _, vocab, parts = bigru_official
    mutate(parts)
    ckpt = write_official(tmp_path / "bad.pth", parts, options())
    with pytest.raises(OfficialFormatError, match=message):
        import_official(ckpt, tmp_path / "own", vocab_path=vocab)
    assert not (tmp_path / "own").exists()


def test_pickled_objects_other_than_namespace_are_refused(tmp_path, bigru_official):
    _, vocab, parts = bigru_official
    path = tmp_path / "evil.pth"
    torch.save({"model": parts, "opt": options(), "extra": Path("/etc/passwd")}, path)
    with pytest.raises(OfficialFormatError, match="refused to unpickle"):
        import_official(path, tmp_path / "own", vocab_path=vocab)
    ordered = tmp_path / "ordered.pth"  # plain containers and tensors stay loadable
    torch.save({"model": parts, "opt": options(), "x": collections.OrderedDict(a=1)}, ordered)
    assert import_official(ordered, tmp_path / "own", vocab_path=vocab).is_dir()


def test_vocab_size_and_coding_are_checked(tmp_path, bigru_official):
    ckpt, vocab, parts = bigru_official
    short = tmp_path / "short.json"
    short.write_text(
        json.dumps({"word2idx": {w: i for i, w in enumerate(WORDS[:6])}, "idx2word": {}, "idx": 6})
    )
    with pytest.raises(OfficialFormatError, match=r"vocabulary .* 7 entries"):
        import_official(ckpt, tmp_path / "own", vocab_path=short)
    soft = write_official(tmp_path / "soft.pth", parts, options(coding_type="VSACoding"))
    with pytest.raises(OfficialFormatError, match="VSACoding"):
        import_official(soft, tmp_path / "own", vocab_path=vocab)
    with pytest.raises(OfficialFormatError, match="--vocab"):
        import_official(ckpt, tmp_path / "own")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(OfficialFormatError, match="not a torch checkpoint"):
        import_official(tmp_path / "junk.pth", tmp_path / "own", vocab_path=vocab)


def test_eval_on_an_imported_checkpoint_uses_the_reference_scores(tmp_path, bigru_official):
    """`chan eval` on the official precomp layout (no counts file: all 36 slots) reports
    the recalls of the reference implementation's own score matrix."""
    from app.cli import main
    from model.training.metrics import retrieval_metrics

    ckpt, vocab, parts = bigru_official
    import_official(ckpt, tmp_path / "own", vocab_path=vocab)
    torch.manual_seed(2)
    regions = torch.randn(5, SLOTS, D)
    # 25 distinct captions (identical ones would tie, and ties rank by float noise)
    extra = ["red", "blue square", "green", "two", "circle above"]
    captions = [f"{extra[i]} {CAPTIONS[j]}" for i in range(5) for j in range(5)]
    data = tmp_path / "precomp"
    data.mkdir()
    np.save(data / "test_ims.npy", regions.numpy())
    (data / "test_caps.txt").write_text("\n".join(captions) + "\n")
    ref_img = ref_images(parts[0], regions)
    expected = torch.empty(5, len(captions))
    for c, caption in enumerate(captions):
        ref_cap = ref_caption(parts[1], ref_ids(caption))
        for i in range(5):
            expected[i, c] = ref_score(ref_img[i], SLOTS, ref_cap, "LSEPooling")
    want = retrieval_metrics(expected.numpy(), np.repeat(np.arange(5), 5))
    out = tmp_path / "eval.json"
    argv = ["eval", "--checkpoint", str(tmp_path / "own"), "--data", str(data), "--out", str(out)]
    assert main(argv) == 0
    got = json.loads(out.read_text())
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key
