"""Greedy and beam-search decoding for :class:`ctxray.generate.decoder.ReportDecoder`.

Both are deterministic (no sampling) and incremental (a key/value cache, so a step costs one token,
not the whole prefix; ``incremental=False`` recomputes the prefix, the slow reference the tests
compare against). Length control: ``min_new_tokens`` forbids the end token before that many tokens,
``max_new_tokens`` stops, ``length_penalty`` divides a beam's summed log-probability by
``length ** length_penalty`` (0: raw sum, favours short reports; 1: per-token mean), and
``no_repeat_ngram`` forbids repeating any n-gram of that size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ctxray.generate.decoder import ReportDecoder


@dataclass
class DecodeConfig:
    """Decoding settings.

    Args:
        num_beams: 1 for greedy decoding.
        max_new_tokens: stop after this many tokens (capped by the decoder's ``max_length``).
        min_new_tokens: no end token before this many tokens.
        length_penalty: beam score = sum log p / length ** length_penalty.
        no_repeat_ngram: forbid repeating n-grams of this size (0: off).
    """

    num_beams: int = 3
    max_new_tokens: int = 400
    min_new_tokens: int = 5
    length_penalty: float = 1.0
    no_repeat_ngram: int = 0


def _banned(seq: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already in ``seq``."""
    if n <= 0 or len(seq) < n:
        return set()
    prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == prefix}


class _Stepper:
    """Next-token log-probabilities for growing sequences, with or without a key/value cache."""

    def __init__(self, decoder: ReportDecoder, visual: torch.Tensor, incremental: bool) -> None:
        self.decoder, self.visual, self.incremental = decoder, visual, incremental
        self.cache: Any = None

    def __call__(self, seqs: torch.Tensor, parents: torch.Tensor | None = None) -> torch.Tensor:
        """Shape: seqs (K, t) -> (K, V) float32 log-probabilities of token t+1.

        Args:
            parents: for beams, row k of ``seqs`` extends row ``parents[k]`` of the previous call.
        """
        if parents is not None:
            self.visual = self.visual[parents]
        if not self.incremental:
            logits = self.decoder(self.visual, seqs)[:, -1]
        elif self.cache is None:
            logits, self.cache = self.decoder.start(self.visual, seqs)
        else:
            if parents is not None:
                self.cache.reorder_cache(parents.to(seqs.device))
            logits, self.cache = self.decoder.step(self.visual, seqs[:, -1:], self.cache)
        return torch.log_softmax(logits.float(), dim=-1)


def _constrain(logp: torch.Tensor, seqs: list[list[int]], step: int, cfg: DecodeConfig, eos: int) -> None:
    """In place: forbid the end token before ``min_new_tokens`` and repeated n-grams."""
    if step < cfg.min_new_tokens:
        logp[:, eos] = float("-inf")
    for k, seq in enumerate(seqs):
        banned = _banned(seq[1:], cfg.no_repeat_ngram)
        if banned:
            logp[k, list(banned)] = float("-inf")


@torch.no_grad()
def greedy_decode(decoder: ReportDecoder, visual: torch.Tensor, cfg: DecodeConfig,
                  incremental: bool = True) -> list[list[int]]:
    """Greedy decoding of a batch.

    Shape:
        visual: (B, T, width) visual tokens.

    Returns:
        B token-id lists without the begin and end tokens.
    """
    c = decoder.cfg
    seqs = torch.full((visual.shape[0], 1), c.bos_id, dtype=torch.long, device=visual.device)
    done = torch.zeros(visual.shape[0], dtype=torch.bool, device=visual.device)
    stepper = _Stepper(decoder, visual, incremental)
    for step in range(min(cfg.max_new_tokens, c.max_length - 1)):
        logp = stepper(seqs)
        _constrain(logp, seqs.tolist() if cfg.no_repeat_ngram else [], step, cfg, c.eos_id)
        nxt = logp.argmax(-1).masked_fill(done, c.eos_id)  # finished rows repeat the end token
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        done |= nxt == c.eos_id
        if bool(done.all()):
            break
    out = []
    for row in seqs[:, 1:].tolist():
        out.append(row[: row.index(c.eos_id)] if c.eos_id in row else [t for t in row if t != c.pad_id])
    return out


@torch.no_grad()
def beam_decode_one(decoder: ReportDecoder, visual: torch.Tensor, cfg: DecodeConfig,
                    incremental: bool = True) -> list[int]:
    """Beam search for one report.

    Shape:
        visual: (1, T, width).

    Returns:
        the best hypothesis's token ids, without the begin and end tokens.
    """
    c, k = decoder.cfg, cfg.num_beams
    alive: list[list[int]] = [[c.bos_id]]
    scores = torch.zeros(1)
    parents: torch.Tensor | None = None
    finished: list[tuple[float, list[int]]] = []
    stepper = _Stepper(decoder, visual, incremental)
    for step in range(min(cfg.max_new_tokens, c.max_length - 1)):
        logp = stepper(torch.tensor(alive, dtype=torch.long, device=visual.device), parents).cpu()
        _constrain(logp, alive, step, cfg, c.eos_id)
        total = (scores[:, None] + logp).flatten()
        top = torch.topk(total, min(2 * k, total.numel()))
        new_alive, new_scores, new_parents = [], [], []
        for score, idx in zip(top.values.tolist(), top.indices.tolist()):
            if score == float("-inf"):
                break
            beam, token = divmod(idx, logp.shape[1])
            if token == c.eos_id:
                finished.append((score / max(step, 1) ** cfg.length_penalty, alive[beam][1:]))
            else:
                new_alive.append(alive[beam] + [token])
                new_scores.append(score)
                new_parents.append(beam)
            if len(new_alive) == k:
                break
        if not new_alive:
            break
        alive, scores, parents = new_alive, torch.tensor(new_scores), torch.tensor(new_parents)
        best_alive = scores.max().item() / (step + 1) ** cfg.length_penalty
        if len(finished) >= k and max(f[0] for f in finished) >= best_alive:
            break
    if not finished:  # ran out of steps: take the unfinished beams as they are
        finished = [(s / max(len(a) - 1, 1) ** cfg.length_penalty, a[1:]) for s, a in zip(scores.tolist(), alive)]
    return max(finished, key=lambda f: f[0])[1]


@torch.no_grad()
def decode(decoder: ReportDecoder, visual: torch.Tensor, cfg: DecodeConfig,
           incremental: bool = True) -> list[list[int]]:
    """Greedy (``num_beams == 1``) or beam-search decoding of a batch.

    Shape:
        visual: (B, T, width).

    Returns:
        B token-id lists without the begin and end tokens.
    """
    if cfg.num_beams < 1:
        raise ValueError(f"DecodeConfig.num_beams={cfg.num_beams}: at least 1")
    was_training = decoder.training
    decoder.eval()
    try:
        if cfg.num_beams == 1:
            return greedy_decode(decoder, visual, cfg, incremental)
        return [beam_decode_one(decoder, visual[i:i + 1], cfg, incremental) for i in range(visual.shape[0])]
    finally:
        decoder.train(was_training)
