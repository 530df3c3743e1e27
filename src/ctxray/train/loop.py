"""``train(config, out_dir)``: the BIUD training loop, one CPU process or many ranks under torchrun.

Data flow: ``setup.build_data`` (cache or shard stream + targets) -> ``DualEncoder`` (DDP-wrapped when distributed)
-> ``Objective`` (features gathered across ranks) -> AdamW + warm-up/cosine -> ``RUN/log.jsonl``,
``RUN/tb``, ``RUN/checkpoints/{last,best}`` (``checkpoint.save_checkpoint``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel

from ctxray.config import save_config
from ctxray.labels import load_labels
from ctxray.models.text import Tokenizer
from ctxray.models.zeroshot import prompt_texts
from ctxray.train import checkpoint as ckpt
from ctxray.train import distributed as D
from ctxray.train.config import TrainConfig
from ctxray.train.data import to_device
from ctxray.train.objective import Objective, entity_token_ids
from ctxray.train.optim import (
    build_optimizer,
    build_scheduler,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
)
from ctxray.train.runtime import RunLogger, Runtime, setup_runtime
from ctxray.train.setup import (
    build_data,
    build_model,
    build_tokenizer,
    check_report_lengths,
    check_resume_config,
    kd_mean_level,
    open_cache,
    report_token_stats,
    resolve_config,
    resolve_text,
    run_text_tower,
    stored_config,
    tower_resolved,
)
from ctxray.train.shard_data import merge_states, train_rows
from ctxray.train.validate import validate
from ctxray.utils.progress import progress
from ctxray.utils.seed import seed_everything

log = logging.getLogger(__name__)

# A step counts as collapsed when the contrastive loss sits at ln B (uniform logits), one tower maps the whole
# batch to nearly one point and the gradient has all but vanished (the demo's plain run once sat there for
# ~150 steps: loss ln 16, cosine 0.9997, gradient norm 0.003). Healthy early steps have a large gradient.
COLLAPSE_COS = 0.99
COLLAPSE_GRAD = 0.05


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train a dual encoder and write a run folder.

    Args:
        config: the run's settings (``configs/*.yaml``; see ``TrainConfig``).
        out_dir: the run folder (``config.json``, ``log.jsonl``, ``tb/``, ``checkpoints/{last,best}``).
        resume: continue from ``out_dir/checkpoints/last`` with the run's saved config.
        stop_after: stop (and save ``last``) after this many optimiser steps of this invocation,
            without changing the schedule: a pre-emption, for tests and job time limits.

    Returns:
        Final metrics: ``step``, ``epoch``, ``train_loss`` (mean over the last epoch's steps), the last
        validation scores (``val_*``), ``best_metric``, ``best_step``, ``seconds``.
    """
    out = Path(out_dir)
    if resume:
        saved = stored_config(out)
        check_resume_config(config, saved)
        config = saved
    config.check()
    owns_group = not D.is_distributed()
    rt = setup_runtime(config.device, config.optim.precision)
    try:
        trainer = Trainer(config, out, rt, resume)
        return trainer.fit(stop_after)
    finally:
        if owns_group:
            D.cleanup_distributed()


class Trainer:
    """One run's model, optimiser, schedule, data and loggers (built by ``train``)."""

    def __init__(self, config: TrainConfig, out: Path, rt: Runtime, resume: bool) -> None:
        self.out, self.rt, self.t0 = out, rt, time.perf_counter()
        seed_everything(config.seed)
        last = out / "checkpoints" / "last"
        cache = open_cache(config)  # read once: the tokenizer's reports, both splits, the input shape
        if resume:
            tokenizer = Tokenizer.from_pretrained(last / ckpt.TOKENIZER_DIR)
        else:
            if rt.main and last.exists():
                log.warning("%s already holds a run; starting over (its checkpoints and log are replaced; "
                            "--resume continues it instead)", out)
            rows = train_rows(config, cache)
            reports = [str(r.get("report", "")) for r in rows]
            tokenizer = build_tokenizer(config, reports)
        self.tokenizer = tokenizer
        config = config if resume else resolve_text(config)
        if not resume:
            self.report_tokens = report_token_stats(tokenizer, reports, config.model.text.max_length)
            check_report_lengths(self.report_tokens, config.data.max_truncated,
                                 str(config.data.shards or config.data.cache))
        self.data = build_data(config, tokenizer, rt, cache)
        if not resume:
            config = resolve_config(config, tokenizer, self.data.targets, cache)
            config.code_version = ckpt.code_version()
        self.config = config
        self.kd_mean_level = kd_mean_level(self.data, config)
        self.model = build_model(tower_resolved(config, out) if resume else config, initialise=not resume).to(rt.device)
        if not resume:  # an hf report tower is copied into the run and named relatively from here on
            config = self.config = run_text_tower(config, out, self.model.text_encoder.backbone, rt.main)
        if config.optim.text_lr_scale == 0:  # the report tower stays as initialised (e.g. the expert's)
            self.model.text_encoder.requires_grad_(False)
        self._build_optimisation()
        self.state = ckpt.ResumeState(world_size=rt.world_size)
        self.collapse: dict[str, int | None] = {"steps": 0, "first_step": None}
        if resume:
            self._restore(last)
        elif rt.main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(config, out / "config.json")
            ckpt.write_json(out / "report_tokens.json", self.report_tokens)
        self.logger = RunLogger(out, rt.main, config.tensorboard, self.state.step if resume else None)
        self.ddp = self._wrap()

    def _build_optimisation(self) -> None:
        cfg, tok = self.config, self.tokenizer
        labels = load_labels()
        phrases = [p for lab in labels.labels for p in (lab.name, *lab.phrases)]
        self.prompt_batch, counts = None, None
        if cfg.loss.prompt > 0:  # the zero-shot prompts, tokenised once, encoded every step (with gradients)
            texts, counts = prompt_texts(labels)
            enc = tok(texts, max_length=cfg.model.text.max_length)
            self.prompt_batch = {k: v.to(self.rt.device) for k, v in enc.items()}
        self.objective = Objective(cfg.loss, entity_token_ids(tok, phrases) if cfg.loss.mlm > 0 else None,
                                   sorted(tok.special_ids), tok.mask_id, tok.vocab_size, prompt_counts=counts)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        micro = self.data.micro_batches
        self.steps_per_epoch = micro // cfg.optim.grad_accum
        if self.steps_per_epoch < 1:
            raise ValueError(f"{cfg.data.shards or cfg.data.cache}: {micro} micro-batches per epoch < optim.grad_accum="
                             f"{cfg.optim.grad_accum}; lower data.batch_size or grad_accum")
        self.total_steps = self.steps_per_epoch * cfg.optim.epochs
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.rt.dtype == torch.float16)

    def _wrap(self) -> torch.nn.Module:
        if not D.is_distributed():
            return self.model
        lo = self.config.loss
        unused = lo.roco == 0  # the temperature (and the text tower without MLM or prompts) get no gradient
        ids = [self.rt.device.index] if self.rt.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=unused)

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self, stop_after: int | None) -> dict[str, Any]:
        cfg, st = self.config, self.state
        done_now, val, epoch_losses, self.epoch_rows = 0, {}, [], []
        log.info("training %d steps (%d epochs x %d), global batch %d, terms %s", self.total_steps,
                 cfg.optim.epochs, self.steps_per_epoch,
                 cfg.data.batch_size * self.rt.world_size * cfg.optim.grad_accum, self.objective.active)
        while st.epoch < cfg.optim.epochs:
            if st.step_in_epoch == 0:
                epoch_losses, self.epoch_rows = [], []
            for row in self._epoch_steps():
                epoch_losses.append(row["loss"])
                self.epoch_rows.append(row)
                done_now += 1
                if stop_after is not None and done_now >= stop_after:
                    self._save(val)
                    return self._final(epoch_losses, val)
                if cfg.save_every and st.step % cfg.save_every == 0:
                    self._save(val)
            if cfg.data.mirror_pairs > 0 and self.epoch_rows:
                mirrored = sum(r["mirrored"] for r in self.epoch_rows) / len(self.epoch_rows)
                log.info("epoch %d: %.1f of %d pairs per micro-batch were mirrored copies (data.mirror_pairs=%g asks "
                         "for %d; fewer when fewer pairs name a side)", st.epoch + 1, mirrored, cfg.data.batch_size,
                         cfg.data.mirror_pairs, int(cfg.data.mirror_pairs * cfg.data.batch_size))
            st.epoch, st.step_in_epoch = st.epoch + 1, 0
            if self.data.val_loader is not None and st.epoch % cfg.val_every == 0:
                val = self._validate()
            self._save(val)
        return self._final(epoch_losses, val)

    def _epoch_steps(self):
        """Yield one logged row per optimiser step of the current epoch (from its saved position)."""
        cfg, st, data = self.config, self.state, self.data
        accum = cfg.optim.grad_accum
        if data.shards is not None:  # the stream skips what the saved position says was consumed
            data.shards.start(st.epoch)
        else:
            data.sampler.set_epoch(st.epoch, skip=st.step_in_epoch * accum * cfg.data.batch_size)
            data.train_set.dataset.set_epoch(st.epoch)  # fresh augmentation draws per epoch
        data.loader_gen.manual_seed(cfg.seed * 1_000_003 + st.epoch)
        n_micro = (self.steps_per_epoch - st.step_in_epoch) * accum
        batches = itertools.islice(iter(data.train_loader), n_micro)
        bar = progress(batches, total=n_micro, desc=f"epoch {st.epoch + 1}/{cfg.optim.epochs}", unit="batch")
        terms: list[dict[str, torch.Tensor]] = []
        tick = time.perf_counter()
        for i, batch in enumerate(bar):
            if data.shards is not None:
                data.shards.update(batch)
            terms.append(self._micro_step(batch, sync=(i + 1) % accum == 0))
            if (i + 1) % accum:
                continue
            row = self._optimizer_step(terms, time.perf_counter() - tick)
            terms, tick = [], time.perf_counter()
            yield row

    def _micro_step(self, batch: dict[str, Any], sync: bool) -> dict[str, torch.Tensor]:
        batch = to_device(batch, self.rt.device)
        masked = self.objective.mask_batch(batch)
        prompts = self.prompt_batch or {}
        no_sync = getattr(self.ddp, "no_sync", None)
        ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with ctx:
            with self.rt.autocast():
                out = self.ddp(batch["volume"], batch["input_ids"], batch["attention_mask"],
                               mlm_input_ids=None if masked is None else masked[0],
                               prompt_input_ids=prompts.get("input_ids"),
                               prompt_attention_mask=prompts.get("attention_mask"))
            loss, logged = self.objective(out, batch, None if masked is None else masked[1])
            self.scaler.scale(loss / self.config.optim.grad_accum).backward()
        if "mirrored" in batch:  # data.mirror_pairs: how many of this batch's pairs are mirrored copies
            logged["mirrored"] = batch["mirrored"].float().sum()
        return logged

    def _optimizer_step(self, terms: list[dict[str, torch.Tensor]], seconds: float) -> dict[str, Any]:
        cfg, st = self.config, self.state
        self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = cfg.optim.clip_norm if cfg.optim.clip_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        st.step += 1
        st.step_in_epoch += 1
        row: dict[str, Any] = {k: float(torch.stack([t[k] for t in terms]).mean()) for k in terms[0]}
        samples = cfg.data.batch_size * self.rt.world_size * len(terms)
        row.update(step=st.step, epoch=st.epoch, lr=lr, grad_norm=grad_norm,
                   samples_per_s=samples / max(seconds, 1e-9),
                   eta_s=seconds * (self.total_steps - st.step))
        self.logger.write(row)
        self._check_collapse(row)
        if st.step % max(1, cfg.log_every) == 0 or st.step == self.total_steps:
            log.info("step %d/%d loss %.4f (%s) %.1f samples/s, eta %.0fs", st.step, self.total_steps, row["loss"],
                     " ".join(f"{k} {row[k]:.4f}" for k in self.objective.active), row["samples_per_s"],
                     row["eta_s"])
        return row

    def _check_collapse(self, row: dict[str, Any]) -> None:
        """Count (and warn about) steps after warm-up where the contrastive term has collapsed: the loss at
        ``ln B`` (what uniform logits give, whatever the targets) while one tower maps the whole batch
        to nearly one point (mean pairwise cosine above ``COLLAPSE_COS``) and the gradient norm is below
        ``COLLAPSE_GRAD``."""
        if "roco" not in row or row["step"] <= self.config.optim.warmup_steps:
            return
        batch = self.config.data.batch_size * self.rt.world_size
        cos = max(row.get("volume_cos", 0.0), row.get("text_cos", 0.0))
        if not (row["roco"] >= 0.98 * math.log(batch) and cos > COLLAPSE_COS and row["grad_norm"] < COLLAPSE_GRAD):
            return
        self.collapse["steps"] += 1
        self.collapse["first_step"] = self.collapse["first_step"] or row["step"]
        if self.rt.main and (self.collapse["steps"] in (1, 10) or self.collapse["steps"] % 100 == 0):
            log.warning("step %d: training has collapsed (%d steps so far): contrastive loss %.3f = ln %d, mean "
                        "pairwise cosine volume %.4f / report %.4f, gradient norm %.2g; lower optim.lr or raise "
                        "optim.warmup_steps", row["step"], self.collapse["steps"], row["roco"], batch,
                        row.get("volume_cos", math.nan), row.get("text_cos", math.nan), row["grad_norm"])

    # -- validation and checkpoints ----------------------------------------------------------------

    def _validate(self) -> dict[str, float]:
        val = validate(self.model, self.tokenizer, self.data.val_loader, self.rt.device,
                       chunk=self.config.data.batch_size * self.rt.world_size, autocast=self.rt.autocast)
        self.logger.write({"step": self.state.step, "epoch": self.state.epoch, **val}, prefix="val")
        log.info("epoch %d validation: %s", self.state.epoch, " ".join(f"{k} {v:.4g}" for k, v in val.items()))
        return val

    def _save(self, val: dict[str, float]) -> None:
        """Write ``last`` (with every rank's RNG state) and ``best`` when validation improved (or, in a
        run without validation, always)."""
        st = self.state
        tensors, meta = ckpt.rng_state()
        position = self.data.shards.state_dict() if self.data.shards is not None else None
        everyone = [(tensors, meta, position)]
        if D.is_distributed():
            everyone = [None] * self.rt.world_size
            torch.distributed.all_gather_object(everyone, (tensors, meta, position))
        if not self.rt.main:
            self.rt.barrier()
            return
        opt_t, opt_meta = optimizer_state_to_tensors(self.optimizer.state_dict())
        st.tensors = dict(opt_t)
        rng_meta = []
        for r, (t, m, _) in enumerate(everyone):
            st.tensors.update({f"rng.{r}.{k}": v for k, v in t.items()})
            rng_meta.append(m)
        st.meta = {"optimizer": opt_meta, "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                   "rng": rng_meta}
        if position is not None:  # the shard stream's position: items consumed per slot, over every rank
            st.meta["shards"] = merge_states([p for _, _, p in everyone])
        metric = _score(val)
        improved = metric is not None and (st.best_metric is None or metric > st.best_metric)
        if improved:
            st.best_metric, st.best_step = metric, st.step
        metrics = {"step": st.step, "epoch": st.epoch, **val}
        ckpts = self.out / "checkpoints"
        ckpt.save_checkpoint(ckpts / "last", self.model, self.tokenizer, self.config, metrics, st)
        if improved or metric is None and st.best_metric is None:  # without validation, best = last
            ckpt.save_checkpoint(ckpts / "best", self.model, self.tokenizer, self.config, metrics)
        self.rt.barrier()

    def _restore(self, last: Path) -> None:
        saved = ckpt.load_resume_state(last)
        self.model.load_state_dict(load_file(str(last / ckpt.MODEL_FILE)))
        opt = optimizer_state_from_tensors(saved.tensors, saved.meta["optimizer"])
        self.optimizer.load_state_dict(opt)
        self.scheduler.load_state_dict(saved.meta["scheduler"])
        if saved.meta.get("scaler"):
            self.scaler.load_state_dict(saved.meta["scaler"])
        if self.data.shards is not None and saved.step_in_epoch > 0:
            if "shards" not in saved.meta:
                raise ValueError(f"{last}: saved mid-epoch without a shard-stream position; cannot resume it")
            self.data.shards.load_state_dict(saved.meta["shards"])
        r = self.rt.rank
        if saved.world_size == self.rt.world_size:
            rng = {k.split(".", 2)[2]: v for k, v in saved.tensors.items() if k.startswith(f"rng.{r}.")}
            ckpt.set_rng_state(rng, saved.meta["rng"][r])
        else:
            log.warning("resuming on %d ranks a run saved on %d: RNG streams are reseeded, not continued",
                        self.rt.world_size, saved.world_size)
            seed_everything(self.config.seed + 1000 * saved.step + r)
        saved.world_size = self.rt.world_size
        saved.tensors, saved.meta = {}, {}
        self.state = saved
        log.info("resumed %s at step %d (epoch %d, step %d of it)", last, saved.step, saved.epoch, saved.step_in_epoch)

    def _kd_summary(self) -> dict[str, float]:
        """PKD over the last epoch beside the two levels it must beat to have transferred anything: the
        best constant prediction (the mean training target; ``kd_mean_level``) and the student against
        other CTs' targets (``pkd_shuffled``)."""
        rows = [r for r in getattr(self, "epoch_rows", []) if "pkd" in r]
        if not rows:
            return {}
        mean = {k: float(sum(r[k] for r in rows) / len(rows)) for k in ("pkd", "pkd_shuffled")}
        return {"pkd_last_epoch": mean["pkd"], "pkd_shuffled_last_epoch": mean["pkd_shuffled"],
                "pkd_mean_level": self.kd_mean_level}

    def _final(self, epoch_losses: list[float], val: dict[str, float]) -> dict[str, Any]:
        st = self.state
        result = {"step": st.step, "epoch": st.epoch, "total_steps": self.total_steps,
                  "train_loss": float(sum(epoch_losses) / len(epoch_losses)) if epoch_losses else math.nan,
                  **val, "best_metric": st.best_metric, "best_step": st.best_step,
                  "collapsed_steps": self.collapse["steps"], "first_collapsed_step": self.collapse["first_step"],
                  **self._kd_summary(),
                  "seconds": time.perf_counter() - self.t0, "run_dir": str(self.out)}
        if self.rt.main:
            ckpt.write_json(self.out / "metrics.json", result)
        self.logger.close()
        return result


def _score(val: dict[str, float]) -> float | None:
    """Model-selection score: zero-shot macro AUROC, or minus the validation loss when AUROC is undefined."""
    if not val:
        return None
    auroc = val.get("val_auroc", math.nan)
    if not math.isnan(auroc):
        return float(auroc)
    loss = val.get("val_loss", math.nan)
    return None if math.isnan(loss) else -float(loss)
