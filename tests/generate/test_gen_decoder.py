"""Report decoder and decoding: shapes, causality, conditioning, gradients, length control."""

from __future__ import annotations

import pytest
import torch

from ctxray.generate.decoder import DecoderConfig, ReportDecoder, lm_loss, pool_feature_map
from ctxray.generate.search import DecodeConfig, _banned, decode

C, GRID, V = 12, (1, 2, 2), 40


def _decoder(conditioning: str = "cross_attention", seed: int = 0) -> ReportDecoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(layers=2, heads=2, width=32, max_length=24, dropout=0.0, conditioning=conditioning,
                        visual_grid=GRID, visual_dim=C, vocab_size=V, bos_id=2, eos_id=3, pad_id=0)
    return ReportDecoder(cfg).eval()


@pytest.mark.parametrize("conditioning", ["cross_attention", "prefix"])
def test_shapes_causality_and_conditioning(conditioning: str) -> None:
    dec = _decoder(conditioning)
    fmap = torch.randn(2, C, 2, 3, 3)
    visual = dec.visual_tokens(fmap)
    assert visual.shape == (2, 4, 32)
    ids = torch.randint(5, V, (2, 7))
    ids[:, 0] = 2
    logits = dec(visual, ids)
    assert logits.shape == (2, 7, V)
    changed = ids.clone()
    changed[:, 5:] = 4  # future tokens must not change earlier logits
    assert torch.allclose(dec(visual, changed)[:, :5], logits[:, :5], atol=1e-5)
    other = dec(dec.visual_tokens(torch.randn(2, C, 2, 3, 3)), ids)
    assert not torch.allclose(other, logits, atol=1e-4)  # the image conditions every position
    assert not torch.allclose(other[:, 0], logits[:, 0], atol=1e-4)


@pytest.mark.parametrize("conditioning", ["cross_attention", "prefix"])
def test_every_parameter_gets_a_gradient(conditioning: str) -> None:
    dec = _decoder(conditioning).train()
    ids = torch.randint(5, V, (3, 6))
    mask = torch.ones_like(ids)
    loss = lm_loss(dec(dec.visual_tokens(torch.randn(3, C, 1, 2, 2)), ids, mask), ids, mask)
    loss.backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_lm_loss_ignores_padding() -> None:
    logits = torch.randn(2, 5, V)
    ids = torch.randint(5, V, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    noisy = logits.clone()
    noisy[0, 2:] = torch.randn(3, V) * 100  # logits that predict padded positions
    a, b = lm_loss(logits, ids, mask), lm_loss(noisy, ids, mask)
    # row 0 predicts positions 1, 2 only (from logits 0, 1): logits at 2.. never count for it
    ref = torch.nn.functional.cross_entropy(
        torch.cat([logits[0, :2], logits[1, :4]]), torch.cat([ids[0, 1:3], ids[1, 1:5]]))
    assert torch.allclose(a, ref) and torch.allclose(a, b)


def test_pool_feature_map_and_config_errors() -> None:
    assert pool_feature_map(torch.randn(2, C, 4, 6, 6), (2, 3, 3)).shape == (2, C, 2, 3, 3)
    with pytest.raises(ValueError, match="feature map"):
        pool_feature_map(torch.randn(2, C, 4, 6), (2, 3, 3))
    with pytest.raises(ValueError, match="visual_dim"):
        ReportDecoder(DecoderConfig(vocab_size=V, bos_id=2, eos_id=3, pad_id=0))
    with pytest.raises(ValueError, match="divisible"):
        ReportDecoder(DecoderConfig(width=30, heads=4, visual_dim=C, vocab_size=V, bos_id=2, eos_id=3, pad_id=0))


def test_banned_ngrams() -> None:
    assert _banned([5, 6, 7, 5], 2) == {6}
    assert _banned([5, 6, 7, 5, 6], 3) == {7}
    assert _banned([5, 6], 0) == set() and _banned([5], 1) == {5}


@pytest.mark.parametrize("beams", [1, 3])
def test_length_control_and_determinism(beams: int) -> None:
    dec = _decoder()
    visual = dec.visual_tokens(torch.randn(2, C, 1, 2, 2))
    short = decode(dec, visual, DecodeConfig(num_beams=beams, max_new_tokens=6, min_new_tokens=0))
    assert all(len(s) <= 6 for s in short)
    long_ = decode(dec, visual, DecodeConfig(num_beams=beams, max_new_tokens=12, min_new_tokens=10))
    assert all(len(s) >= 10 and 3 not in s for s in long_)  # no end token before min_new_tokens
    norep = decode(dec, visual, DecodeConfig(num_beams=beams, max_new_tokens=15, min_new_tokens=15,
                                             no_repeat_ngram=1))
    assert all(len(set(s)) == len(s) for s in norep)
    again = decode(dec, visual, DecodeConfig(num_beams=beams, max_new_tokens=12, min_new_tokens=10))
    assert again == long_


@pytest.mark.parametrize("conditioning", ["cross_attention", "prefix"])
@pytest.mark.parametrize("beams", [1, 3])
def test_cached_decoding_equals_recomputation(conditioning: str, beams: int) -> None:
    dec = _decoder(conditioning, seed=5)
    visual = dec.visual_tokens(torch.randn(3, C, 1, 2, 2))
    cfg = DecodeConfig(num_beams=beams, max_new_tokens=14, min_new_tokens=3)
    assert decode(dec, visual, cfg, incremental=True) == decode(dec, visual, cfg, incremental=False)


@torch.no_grad()
def test_beam_width_one_is_greedy_and_wide_beam_is_exact() -> None:
    from ctxray.generate.search import beam_decode_one

    dec = _decoder(seed=3)
    visual = dec.visual_tokens(torch.randn(2, C, 1, 2, 2))
    greedy = decode(dec, visual, DecodeConfig(num_beams=1, max_new_tokens=8, min_new_tokens=8, length_penalty=0.0))
    for i in range(2):
        one = beam_decode_one(dec, visual[i:i + 1], DecodeConfig(num_beams=1, max_new_tokens=8, min_new_tokens=8))
        assert one == greedy[i]
        # with as many beams as tokens, beam search over 2-token reports is exhaustive: it must find
        # the best of all V*V continuations (end token excluded by min_new_tokens)
        lp1 = torch.log_softmax(dec(visual[i:i + 1], torch.tensor([[2]]))[0, -1], -1)  # (V,)
        pairs = torch.tensor([[2, t] for t in range(V)])
        lp2 = torch.log_softmax(dec(visual[i:i + 1].expand(V, -1, -1).contiguous(), pairs)[:, -1], -1)  # (V, V)
        total = lp1[:, None] + lp2
        total[3, :] = float("-inf")
        total[:, 3] = float("-inf")
        best = divmod(int(total.argmax()), V)
        wide = beam_decode_one(dec, visual[i:i + 1], DecodeConfig(num_beams=V, max_new_tokens=2, min_new_tokens=2,
                                                                  length_penalty=0.0))
        assert tuple(wide) == best
