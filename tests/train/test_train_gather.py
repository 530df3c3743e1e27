"""Cross-rank feature gather: patched collectives (no processes) and one real 2-process gloo run."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ctxray.losses import RelationKDLoss, RobustContrastiveLoss, equivalence_from_labels
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


# ------------------------------------------------------------------------------------ real gloo run

_GLOBAL_B, _IN, _EMB, _TEACHER = 6, 10, 8, 5


class _Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vol, self.txt = torch.nn.Linear(_IN, _EMB), torch.nn.Linear(_IN, _EMB)

    def forward(self, vol: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vol(vol), self.txt(txt)


def _problem() -> tuple[_Towers, dict[str, torch.Tensor]]:
    """Two tiny towers and one global batch, identical in every process."""
    torch.manual_seed(0)
    towers = _Towers()
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(_GLOBAL_B, 3)
    labels[[1, 4]] = torch.tensor([1.0, 0.0, 1.0])  # 1 and 4 (on different ranks) are equivalent, as are 0,2,3,5
    batch = dict(
        vol=torch.randn(_GLOBAL_B, _IN, generator=g),
        txt=torch.randn(_GLOBAL_B, _IN, generator=g),
        teacher=torch.randn(_GLOBAL_B, _TEACHER, generator=g),
        labels=labels,
    )
    return towers, batch


def _global_loss(v: torch.Tensor, t: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    v, t = F.normalize(v, dim=1), F.normalize(t, dim=1)
    roco = RobustContrastiveLoss("multi_positive")(v, t, 10.0, equivalence_from_labels(labels))
    return roco + RelationKDLoss(tau=0.5)(v, teacher)


def _worker(rank: int, world: int, init_file: str, out_dir: str, splits: list[tuple[int, int]]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for k, sizes in enumerate(splits):
            towers, batch = _problem()
            model = torch.nn.parallel.DistributedDataParallel(towers)
            start = sum(sizes[:rank])
            local = {key: b[start : start + sizes[rank]] for key, b in batch.items()}
            v_loc, t_loc = model(local["vol"], local["txt"])
            v, t = D.gather_features(v_loc), D.gather_features(t_loc)
            loss = _global_loss(v, t, D.gather_features(local["teacher"]), D.gather_features(local["labels"]))
            (loss * D.world_size()).backward()  # DDP averages gradients over ranks
            grads = {n: p.grad for n, p in model.module.named_parameters()}
            torch.save(dict(loss=loss.detach(), v=v.detach(), grads=grads), f"{out_dir}/rank{rank}_{k}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process_on_the_concatenated_batch(tmp_path):
    """Even (3+3) and uneven (4+2) shards: same gathered features, loss and gradients as one process."""
    splits = [(3, 3), (4, 2)]
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), splits), nprocs=2, join=True)
    towers, batch = _problem()
    v_ref, t_ref = towers(batch["vol"], batch["txt"])
    ref = _global_loss(v_ref, t_ref, batch["teacher"], batch["labels"])
    ref.backward()
    ref_grads = dict(towers.named_parameters())
    for k in range(len(splits)):
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}_{k}.pt", weights_only=True)
            torch.testing.assert_close(got["v"], v_ref.detach(), atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(got["loss"], ref.detach(), atol=1e-6, rtol=1e-5)
            for name, p in ref_grads.items():
                torch.testing.assert_close(got["grads"][name], p.grad, atol=1e-6, rtol=1e-5, msg=name)
