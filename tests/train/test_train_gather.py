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


class _KeyedWorld(_FakeWorld):
    """A patched world serving several gathered features, told apart by their width."""

    def __init__(self, shards: dict[int, list[torch.Tensor]], rank: int) -> None:
        super().__init__(next(iter(shards.values())), rank)
        self.by_width = shards

    def all_gather(self, out: list[torch.Tensor], tensor: torch.Tensor) -> None:
        if not (tensor.dtype == torch.long and tensor.numel() == 1):
            self.shards = self.by_width[tensor.shape[1]]
        super().all_gather(out, tensor)


def test_prompt_term_under_patched_ranks_gives_the_single_process_gradient(monkeypatch):
    """Every rank encodes the same prompts; DDP averages the ranks' gradients. The local report rows carry W
    times their global-loss gradient (like every global term) and each rank's prompt gradient is the whole
    single-process one (scaled by 1/W inside the loss), so the average is exactly the one-process gradient."""
    from ctxray.train.config import LossConfig
    from ctxray.train.objective import Objective

    g = torch.Generator().manual_seed(2)
    text_all = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    prompts_all = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    labels_all = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [1.0, 1.0], [0.0, 1.0], [float("nan"), 0.0],
                               [1.0, 0.0]])
    objective = Objective(LossConfig(roco=0.0, pkd=0.0, srkd=0.0, prompt=1.0), prompt_counts=[(2, 1), (1, 1)])
    volume = torch.zeros(6, 8)

    def run(text, prompts, labels):
        out = {"volume": volume[: len(text)], "text": text, "prompts": prompts, "logit_scale": torch.tensor(1.0)}
        return objective(out, {"labels": torch.zeros(len(text), 18), "report_labels": labels})

    t_ref, p_ref = text_all.clone().requires_grad_(), prompts_all.clone().requires_grad_()
    loss_ref, logged_ref = run(t_ref, p_ref, labels_all)
    loss_ref.backward()
    prompt_grads = []
    for rank, sl in enumerate((slice(0, 4), slice(4, 6))):  # uneven shards
        _KeyedWorld({8: [text_all[:4], text_all[4:]], 2: [labels_all[:4], labels_all[4:]]}, rank).install(monkeypatch)
        t_loc, p_loc = text_all[sl].clone().requires_grad_(), prompts_all.clone().requires_grad_()
        loss, logged = run(t_loc, p_loc, labels_all[sl])
        loss.backward()
        assert logged["prompt"].item() == pytest.approx(logged_ref["prompt"].item(), rel=1e-6)
        torch.testing.assert_close(t_loc.grad, 2 * t_ref.grad[sl])
        prompt_grads.append(p_loc.grad)
    torch.testing.assert_close((prompt_grads[0] + prompt_grads[1]) / 2, p_ref.grad)
    torch.testing.assert_close(prompt_grads[0], prompt_grads[1])  # each rank saw the whole batch's prompt gradient
