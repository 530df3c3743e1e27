"""Cross-rank feature gather with patched collectives (no processes); the real 2-process gloo run, on uneven
shards, is ``test_train_ddp.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ctxray.losses import RobustContrastiveLoss
from ctxray.train import distributed as D

# ------------------------------------------------------------------------------------ patched collectives


class _FakeWorld:
    """Stands in for torch.distributed: this process is `rank` of len(shards); others hold `shards`."""

    def __init__(self, shards: list[torch.Tensor], rank: int) -> None:
        self.shards, self.me = shards, rank
        self.calls = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(D.dist, "is_available", lambda: True)
        monkeypatch.setattr(D.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(D.dist, "get_world_size", lambda: len(self.shards))
        monkeypatch.setattr(D.dist, "get_rank", lambda: self.me)
        monkeypatch.setattr(D.dist, "all_gather", self.all_gather)

    def all_gather(self, out: list[torch.Tensor], tensor: torch.Tensor) -> None:
        self.calls += 1
        assert len(out) == len(self.shards) and not tensor.requires_grad
        if tensor.dtype == torch.long and tensor.numel() == 1:  # the size exchange
            for o, s in zip(out, self.shards):
                o.fill_(s.shape[0])
            return
        for r, (o, s) in enumerate(zip(out, self.shards)):
            assert o.shape == tensor.shape  # equal shapes, as real all_gather requires
            src = tensor if r == self.me else s
            o.zero_()
            o[: min(s.shape[0], src.shape[0])] = src[: s.shape[0]]


def test_identity_when_not_distributed(monkeypatch):
    x = torch.randn(3, 4, requires_grad=True)
    assert D.gather_features(x) is x
    assert D.world_size() == 1 and D.rank() == 0 and not D.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.setup_distributed() is False and not D.is_distributed()
    D.cleanup_distributed()  # a no-op without a process group


@pytest.mark.parametrize("sizes", [(2, 2, 2), (3, 1, 2)])
def test_patched_gather_orders_shards_and_keeps_only_the_local_gradient(monkeypatch, sizes):
    g = torch.Generator().manual_seed(0)
    shards = [torch.randn(n, 4, generator=g) for n in sizes]
    local = shards[1].clone().requires_grad_()
    world = _FakeWorld(shards, rank=1)
    world.install(monkeypatch)
    out = D.gather_features(local)
    assert world.calls == 2
    torch.testing.assert_close(out, torch.cat(shards), atol=0, rtol=0)
    weights = torch.randn(out.shape, generator=g)
    (out * weights).sum().backward()
    start = sizes[0]
    torch.testing.assert_close(local.grad, weights[start : start + sizes[1]], atol=0, rtol=0)


def test_patched_gather_feeds_the_global_loss_with_local_gradients_equal_to_single_process(monkeypatch):
    g = torch.Generator().manual_seed(1)
    v_all = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    t_all = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    loss_fn = RobustContrastiveLoss("none")
    v_ref, t_ref = v_all.clone().requires_grad_(), t_all.clone().requires_grad_()
    loss_fn(v_ref, t_ref, 5.0).backward()
    for rank in range(2):
        sl = slice(3 * rank, 3 * rank + 3)
        v_loc, t_loc = v_all[sl].clone().requires_grad_(), t_all[sl].clone().requires_grad_()
        _FakeWorld([v_all[:3], v_all[3:]], rank).install(monkeypatch)
        v_g = D.gather_features(v_loc)
        _FakeWorld([t_all[:3], t_all[3:]], rank).install(monkeypatch)
        t_g = D.gather_features(t_loc)
        loss_fn(v_g, t_g, 5.0).backward()
        torch.testing.assert_close(v_loc.grad, v_ref.grad[sl])
        torch.testing.assert_close(t_loc.grad, t_ref.grad[sl])
