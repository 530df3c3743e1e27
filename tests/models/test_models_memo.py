"""The memoised frozen prefix gives the plain encoder's outputs and gradients and computes each volume once."""

from __future__ import annotations

import pytest
import torch

from ctxray.models.i3resnet import I3ResNet
from ctxray.models.memo import PrefixMemo, attach_prefix_memo, detach_prefix_memo

TINY = {"layers": (1, 2, 1, 1), "width": 4, "input_shape": (16, 32, 32)}


def _pair(freeze: int, seed: int = 0) -> tuple[I3ResNet, I3ResNet]:
    torch.manual_seed(seed)
    plain = I3ResNet(**TINY, freeze_stages=freeze)
    memo = I3ResNet(**TINY, freeze_stages=freeze)
    memo.load_state_dict(plain.state_dict())
    return plain, memo


@pytest.mark.parametrize("freeze", [1, 3, 4, 5])
def test_memo_gives_the_plain_outputs_and_gradients(freeze: int) -> None:
    plain, memoised = _pair(freeze)
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so a skipped layer would show
        for m in (*plain.modules(), *memoised.modules()):
            if isinstance(m, torch.nn.BatchNorm3d):
                torch.manual_seed(1)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    store = PrefixMemo()
    attach_prefix_memo(memoised, store)
    x = torch.rand(3, 1, 16, 32, 32)
    plain.train(), memoised.train()
    for _ in range(2):  # the second pass is served from the store
        plain.zero_grad(), memoised.zero_grad()
        a, b = plain(x), memoised(x)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        if freeze < 5:  # fully frozen: nothing has a gradient
            (a ** 2).sum().backward()
            (b ** 2).sum().backward()
        for (name, pa), pb in zip(plain.named_parameters(), memoised.parameters()):
            assert (pa.grad is None) == (pb.grad is None), name
            if pa.grad is not None:
                torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert store.misses == 3 and store.hits == 3  # each volume computed once, served the second time
    grads = [p.grad is not None for p in memoised.parameters()]
    assert any(grads) == (freeze < 5)


def test_memo_computes_new_inputs_and_keeps_weight_sets_apart() -> None:
    store = PrefixMemo()
    _, a = _pair(5, seed=0)
    _, b = _pair(5, seed=1)
    ref_a, ref_b = I3ResNet(**TINY, freeze_stages=5), I3ResNet(**TINY, freeze_stages=5)
    ref_a.load_state_dict(a.state_dict()), ref_b.load_state_dict(b.state_dict())
    for enc in (a, b, ref_a, ref_b):
        enc.eval()
    attach_prefix_memo(a, store), attach_prefix_memo(b, store)
    x = torch.rand(2, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), ref_a(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b(x), ref_b(x), rtol=1e-5, atol=1e-6)  # same inputs, other weights: not a hit
        assert store.misses == 4 and len(store.store) == 4
        x2 = x.clone()
        x2[1, 0, 0, 0, 0] += 0.5  # an augmented volume is computed, not served
        torch.testing.assert_close(a(x2), ref_a(x2), rtol=1e-5, atol=1e-6)
        assert store.misses == 5 and store.hits == 1
        # a stage inside the frozen prefix is the plain computation
        torch.testing.assert_close(a.feature_map(x, stage=2), ref_a.feature_map(x, stage=2))


def test_memo_leaves_the_state_dict_and_detaches() -> None:
    _, enc = _pair(4)
    keys = list(enc.state_dict())
    attach_prefix_memo(enc, PrefixMemo())
    assert list(enc.state_dict()) == keys and "feature_map" in enc.__dict__
    detach_prefix_memo(enc)
    assert "feature_map" not in enc.__dict__


def test_memo_needs_a_frozen_i3resnet() -> None:
    with pytest.raises(ValueError, match="freeze_stages >= 1"):
        attach_prefix_memo(I3ResNet(**TINY), PrefixMemo())
    with pytest.raises(ValueError, match="I3ResNet"):
        attach_prefix_memo(torch.nn.Linear(2, 2), PrefixMemo())  # type: ignore[arg-type]


def test_a_deeper_prefix_continues_a_stored_shorter_one_and_the_store_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    last = I3ResNet(**TINY, freeze_stages=4)  # stage 4 trains: the store gets stage-3 outputs
    frozen = I3ResNet(**TINY, freeze_stages=5)
    frozen.load_state_dict(last.state_dict())
    store = PrefixMemo()
    attach_prefix_memo(last, store)
    x = torch.rand(2, 1, 16, 32, 32)
    with torch.no_grad():
        last(x)
        (key, stage3), = list(store.store.items())[:1]
        store.store[key] = stage3 + 1.0  # a stored stage-3 output that differs from a recomputation
        attach_prefix_memo(frozen, store)
        got = frozen.feature_map(x[:1])
        want = frozen.stages[3](stage3[None] + 1.0)  # stage 4 applied to the stored output, not to a recomputation
    torch.testing.assert_close(got, want)
    store.save(tmp_path / "memo.safetensors")
    back = PrefixMemo.load(tmp_path / "memo.safetensors")
    assert back.store.keys() == store.store.keys()
    assert all(torch.equal(back.store[k], v) for k, v in store.store.items())
