"""Two gloo processes under DistributedDataParallel give the single-process loss and gradients of the concatenated
batch (the trainer's Objective, with false-negative correction that keeps a mirrored pair apart across the ranks,
both KD terms and the report prompt term on, on uneven shards), the whole trainer on 2 ranks follows the
single-process run, and on tar shards each rank reads its own half across a stop and resume. The training side's one
multi-process run: one spawn serves all three checks (``tests/train/test_train_gather.py`` checks the gather with
patched collectives; ``tests/data/test_data_multinode.py`` checks the torchrun rendezvous of two simulated nodes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctxray.data.shards import write_shards
from ctxray.models.dual import DualEncoder, DualEncoderConfig
from ctxray.models.text import TextEncoderConfig
from ctxray.train import loop
from ctxray.train.config import LossConfig, TrainConfig
from ctxray.train.loop import train
from ctxray.train.objective import Objective

from .test_train_support import tiny_config, write_cache, write_targets

B, DT = 6, 8  # global batch, teacher width
SHARDS = (4, 2)  # pairs on rank 0 and rank 1
PROMPT_COUNTS = [(2, 1), (1, 2)]  # two labels' positive and negative prompts (6 prompts)


def _model() -> DualEncoder:
    torch.manual_seed(0)
    cfg = DualEncoderConfig(encoder="vit3d_tiny", input_shape=(16, 32, 32), embed_dim=16, teacher_dim=DT,
                            text=TextEncoderConfig(hidden=16, layers=1, heads=2, max_length=12, dropout=0.0,
                                                   vocab_size=30))
    return DualEncoder(cfg)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(B, 18)
    labels[0, 3] = labels[4, 3] = 1.0  # rows 0 and 4 equivalent (one on each rank), rows 1, 2 and 5 too,
    labels[3, 5] = 1.0  # but row 5 is row 2's left-right mirror (data.mirror_pairs): kept apart across the ranks
    ids = torch.randint(5, 30, (B, 10), generator=g)
    mask = torch.ones(B, 10, dtype=torch.long)
    mask[1, 7:] = 0
    report_labels = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [0.0, 1.0], [1.0, 1.0], [float("nan"), 0.0],
                                  [0.0, 0.0]])
    return {"volume": torch.rand(B, 1, 16, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask,
            "labels": labels, "teacher": torch.nn.functional.normalize(torch.randn(B, DT, generator=g), dim=1),
            "report_labels": report_labels, "index": torch.tensor([0, 1, 2, 3, 4, 2]),
            "mirrored": torch.tensor([False, False, False, False, False, True])}


def _prompts() -> dict[str, torch.Tensor]:
    """Six token sequences standing in for the zero-shot prompts: the same on every rank."""
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(6, 5, dtype=torch.long)
    mask[2, 3:] = 0
    return {"prompt_input_ids": torch.randint(5, 30, (6, 5), generator=g), "prompt_attention_mask": mask}


def _loss_cfg() -> LossConfig:
    return LossConfig(correction="multi_positive", false_negatives="labels", pkd=0.7, srkd=0.5, prompt=0.6)


def _step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], torch.Tensor]:
    out = model(batch["volume"], batch["input_ids"], batch["attention_mask"], **_prompts())
    loss, logged = Objective(_loss_cfg(), prompt_counts=PROMPT_COUNTS)(out, batch)
    loss.backward()
    return {k: float(v) for k, v in logged.items()}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _shard_config(cache: Path, retrieval: Path) -> TrainConfig:
    """Two epochs streamed from the train shards (4 pairs per rank and step), validation from the valid shards."""
    shards = cache.parent / "shards"
    return tiny_config(cache, retrieval, **{"data.cache": "", "data.shards": str(shards / "train"),
                                            "data.val_shards": str(shards / "valid"), "optim.epochs": 2,
                                            "data.batch_size": 4})


def _worker(rank: int, world: int, store: str, out: str, cache: str, retrieval: str) -> None:
    """One spawn for every check (process start-up and imports dominate their cost): a DDP step on this rank's
    shard of the batch, the trainer on the cache, and the trainer on tar shards stopped after one step and
    resumed, recording the ids this rank stepped on per epoch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = _model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        full = _batch()
        start = sum(SHARDS[:rank])  # uneven shards: the gather's size exchange on real collectives
        local = {k: v[start:start + SHARDS[rank]] for k, v in full.items()}
        logged = _step(ddp, local)
        if rank == 0:
            from safetensors.torch import save_file

            save_file(_grads(model), str(Path(out) / "grads.safetensors"))
            (Path(out) / "logged.json").write_text(json.dumps(logged))
        train(tiny_config(Path(cache), Path(retrieval), **{"optim.epochs": 1, "data.batch_size": 4}),
              Path(out) / "two")

        seen: dict[int, list[str]] = {}
        step = loop.Trainer._micro_step

        def record(self, batch, sync):
            seen.setdefault(self.state.epoch, []).extend(batch["ids"])
            return step(self, batch, sync)

        loop.Trainer._micro_step = record
        cfg = _shard_config(Path(cache), Path(retrieval))
        train(cfg, Path(out) / "on_shards", stop_after=1)
        train(cfg, Path(out) / "on_shards", resume=True)
        (Path(out) / f"ids{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Run the 2-rank workers once; returns the folder with their outputs and the data they trained on."""
    root = tmp_path_factory.mktemp("ddp")
    cache = write_cache(root / "cache", n_train=16, n_valid=4, seed=2)
    retrieval = write_targets(root / "retrieval", cache)
    for split in ("train", "valid"):  # ~2 volumes of (16, 32, 32) float16 per shard
        write_shards(cache, root / "shards" / split, split=split, shard_bytes=40_000)
    mp.spawn(_worker, args=(2, str(root / "store"), str(root), str(cache), str(retrieval)), nprocs=2, join=True)
    return root, cache, retrieval


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_on_the_global_batch(two_ranks):
    from safetensors.torch import load_file

    root = two_ranks[0]
    two_grads = load_file(str(root / "grads.safetensors"))
    two_logged = json.loads((root / "logged.json").read_text())

    model = _model()
    one_logged = _step(model, _batch())
    one_grads = _grads(model)

    for key in ("roco", "pkd", "srkd", "prompt", "loss"):
        assert two_logged[key] == pytest.approx(one_logged[key], rel=1e-5, abs=1e-6), key
    assert set(two_grads) == set(one_grads)
    # Float32 sums taken in another order (two half-batches, then an all-reduce) differ in the last bits,
    # by an amount that depends on the CPU's kernels; compare each gradient tensor as a whole, relative to
    # its norm (floored at a millionth of the whole gradient's norm, for tensors whose true gradient is
    # zero, e.g. attention key biases): summation-order noise is ~1e-7 of that, any real error (a wrong
    # scale, a missing rank's negatives) is of order 1.
    total = torch.sqrt(sum(g.double().pow(2).sum() for g in one_grads.values())).item()
    for name, g in one_grads.items():
        err = _rel_err(two_grads[name], g, floor=1e-6 * total)
        assert err < 1e-4, (name, err)
    # the check has teeth: with DDP's plain averaging (no world-size factor) gradients are halved
    big = [n for n, g in one_grads.items() if g.norm().item() > 1e-3 * total]
    assert len(big) > 10
    for name in big:
        assert _rel_err(two_grads[name] / 2, one_grads[name], floor=1e-6 * total) > 0.4, name


def _rel_err(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    """``|a - b| / max(|b|, floor)`` over the whole tensor, in float64."""
    a, b = a.double(), b.double()
    return (a - b).norm().item() / max(b.norm().item(), floor)


@pytest.mark.slow
def test_trainer_under_two_ranks_follows_the_single_process_run(two_ranks, tmp_path):
    """The whole trainer (sampler shards, gathered losses, DDP, rank-0 checkpoints) on 2 gloo ranks with
    4 pairs each takes the same steps as one process with 8 pairs per batch."""
    root, cache, retrieval = two_ranks
    train(tiny_config(cache, retrieval, **{"optim.epochs": 1, "data.batch_size": 8}), tmp_path / "one")

    def rows(run):
        return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]

    two, one = rows(root / "two"), rows(tmp_path / "one")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2]
    for a, b in zip(two, one):
        for key in ("loss", "roco", "pkd", "srkd"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key)
    def val_rows(run):
        return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "val_auroc" in line]

    (v2,), (v1,) = val_rows(root / "two"), val_rows(tmp_path / "one")  # validation sharded, then gathered
    assert v2["val_n"] == v1["val_n"] == 4
    for key in ("val_loss", "val_r1", "val_auroc"):
        assert v2[key] == pytest.approx(v1[key], rel=1e-4), key
    assert (root / "two" / "checkpoints" / "last" / "state.safetensors").is_file()
    state = json.loads((root / "two" / "checkpoints" / "last" / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's RNG state is kept


@pytest.mark.slow
def test_two_gloo_ranks_read_disjoint_shard_halves_across_a_resume(two_ranks):
    root, cache, _ = two_ranks
    train_ids = [json.loads(line)["id"] for line in (cache / "manifest.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "train"]
    got = [json.loads((root / f"ids{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        a, b = got[0][epoch], got[1][epoch]
        assert len(a) == len(b) == 8 and not set(a) & set(b)  # each rank its own half
        assert sorted(a + b) == sorted(train_ids), epoch  # together every volume once, across the resume
    state = json.loads((root / "on_shards" / "checkpoints" / "last" / "state.json").read_text())
    assert state["world_size"] == 2 and state["shards"]["world_size"] == 2
