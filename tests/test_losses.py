"""Properties of the BIUD losses: contrastive (robust), pair-wise KD, relation KD, masked LM, report prompts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctxray.losses import (
    MaskedLMLoss,
    PairwiseKDLoss,
    RelationKDLoss,
    ReportPromptLoss,
    RobustContrastiveLoss,
    balanced_cell_bce,
    equivalence_from_labels,
    equivalence_from_text,
    mask_entity_tokens,
)

CORRECTIONS = ["none", "multi_positive", "soft"]


def _unit(*shape: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=dtype), dim=-1)


def _mask(b: int, pairs: list[tuple[int, int]]) -> torch.Tensor:
    m = torch.eye(b, dtype=torch.bool)
    for i, j in pairs:
        m[i, j] = m[j, i] = True
    return m


def _clip_reference(v: torch.Tensor, t: torch.Tensor, scale: float) -> torch.Tensor:
    """Textbook symmetric InfoNCE, written independently with explicit loops."""
    b = v.shape[0]
    total = 0.0
    for i in range(b):
        row = [scale * float(v[i] @ t[j]) for j in range(b)]
        col = [scale * float(v[j] @ t[i]) for j in range(b)]
        total += -row[i] + math.log(sum(math.exp(r) for r in row))
        total += -col[i] + math.log(sum(math.exp(c) for c in col))
    return torch.tensor(total / (2 * b))


# ----------------------------------------------------------------------------------------- contrastive


def test_plain_infonce_matches_textbook_formula():
    v, t = _unit(6, 16, seed=1), _unit(6, 16, seed=2)
    got = RobustContrastiveLoss("none")(v, t, torch.tensor(7.0))
    torch.testing.assert_close(got, _clip_reference(v, t, 7.0).float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_equal_features_at_high_scale_give_near_zero_loss(correction):
    v = _unit(8, 32)
    loss = RobustContrastiveLoss(correction)(v, v.clone(), torch.tensor(100.0), None, torch.eye(8))
    assert loss.item() < 1e-3


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_all_equal_logits_give_exactly_log_b(correction):
    b = 5
    v, t = _unit(b, 16, seed=3), _unit(b, 16, seed=4)
    eq = _mask(b, [(0, 1), (2, 4)])
    sim = torch.full((b, b), 0.7).fill_diagonal_(1.0)
    loss = RobustContrastiveLoss(correction)(v, t, torch.tensor(0.0), eq, sim)  # scale 0: every logit is 0
    assert loss.item() == pytest.approx(math.log(b), abs=1e-6)


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_symmetric_in_the_two_modalities(correction):
    b = 6
    v, t = _unit(b, 16, seed=5), _unit(b, 16, seed=6)
    eq = _mask(b, [(0, 3), (1, 2), (1, 5), (2, 5)])
    sim = (_unit(b, 8, seed=7) @ _unit(b, 8, seed=7).T).abs()
    loss = RobustContrastiveLoss(correction)
    torch.testing.assert_close(loss(v, t, 10.0, eq, sim), loss(t, v, 10.0, eq, sim))


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_gradcheck_float64(correction):
    b = 4
    v = _unit(b, 6, seed=8, dtype=torch.float64).requires_grad_()
    t = _unit(b, 6, seed=9, dtype=torch.float64).requires_grad_()
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    eq = _mask(b, [(0, 2)])
    sim = torch.rand(b, b, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sim = (sim + sim.T) / 2
    loss = RobustContrastiveLoss(correction)
    assert torch.autograd.gradcheck(lambda a, c, s: loss(a, c, s, eq, sim), (v, t, scale))


@pytest.mark.parametrize("correction", ["multi_positive", "soft"])
def test_correction_is_a_no_op_when_the_equivalence_mask_is_the_identity(correction):
    b = 6
    v, t = _unit(b, 16, seed=10), _unit(b, 16, seed=11)
    sim = torch.rand(b, b, generator=torch.Generator().manual_seed(1))
    plain = RobustContrastiveLoss("none")(v, t, 12.0)
    fixed = RobustContrastiveLoss(correction)(v, t, 12.0, torch.eye(b, dtype=torch.bool), sim)
    torch.testing.assert_close(fixed, plain, atol=0, rtol=0)


@pytest.mark.parametrize("correction", ["multi_positive", "soft"])
def test_correction_changes_the_loss_exactly_where_reports_are_equivalent(correction):
    b = 6
    v, t = _unit(b, 16, seed=12), _unit(b, 16, seed=13)
    eq = _mask(b, [(1, 4)])
    sim = torch.full((b, b), 0.9)
    plain = RobustContrastiveLoss("none", reduction="none")(v, t, 12.0, eq, sim)
    fixed = RobustContrastiveLoss(correction, reduction="none")(v, t, 12.0, eq, sim)
    assert plain.shape == fixed.shape == (b,)
    changed = (plain - fixed).abs() > 1e-6
    assert changed.tolist() == [False, True, False, False, True, False]
    torch.testing.assert_close(fixed[~changed], plain[~changed], atol=0, rtol=0)
    torch.testing.assert_close(fixed.mean(), RobustContrastiveLoss(correction)(v, t, 12.0, eq, sim))


def test_multi_positive_matches_a_hand_computed_value():
    b = 3
    v, t = _unit(b, 8, seed=14), _unit(b, 8, seed=15)
    eq = _mask(b, [(0, 2)])
    logits = 5.0 * v @ t.T
    lp_r, lp_c = F.log_softmax(logits, 1), F.log_softmax(logits.T, 1)
    q = torch.tensor([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    expected = 0.5 * (-(q * lp_r).sum(1).mean() - (q * lp_c).sum(1).mean())
    torch.testing.assert_close(RobustContrastiveLoss("multi_positive")(v, t, 5.0, eq), expected)


def test_soft_weights_equivalent_pairs_by_text_similarity():
    b = 3
    v, t = _unit(b, 8, seed=16), _unit(b, 8, seed=17)
    eq = _mask(b, [(0, 1)])
    sim = torch.tensor([[1.0, 0.5, 0.9], [0.5, 1.0, 0.2], [0.9, 0.2, 1.0]])  # (0,2) is similar but not equivalent
    logits = 4.0 * v @ t.T
    q = torch.tensor([[1.0, 0.5, 0], [0.5, 1.0, 0], [0, 0, 1.0]])
    q = q / q.sum(1, keepdim=True)
    expected = 0.5 * (-(q * F.log_softmax(logits, 1)).sum(1).mean() - (q * F.log_softmax(logits.T, 1)).sum(1).mean())
    torch.testing.assert_close(RobustContrastiveLoss("soft")(v, t, 4.0, eq, sim), expected)


@pytest.mark.parametrize("correction", ["multi_positive", "soft"])
def test_correction_stops_pushing_equivalent_pairs_apart(correction):
    """Two normal patients with identical reports: plain InfoNCE prefers their pairs separated in the
    embedding space; with the correction the merged configuration is preferred."""
    u = _unit(4, 16, seed=18)
    merged = u.clone()
    merged[1] = merged[0]
    separated = merged.clone()
    separated[1] = F.normalize(merged[0] + 0.3 * _unit(16, seed=19), dim=0)
    eq = _mask(4, [(0, 1)])
    sim = torch.ones(4, 4)
    loss = {c: RobustContrastiveLoss(c) for c in ("none", correction)}
    plain_m, plain_s = (loss["none"](x, x, 30.0) for x in (merged, separated))
    robust_m, robust_s = (loss[correction](x, x, 30.0, eq, sim) for x in (merged, separated))
    assert plain_s < plain_m - 0.1
    assert robust_s > robust_m + 0.1


def test_contrastive_bad_inputs():
    with pytest.raises(ValueError, match="correction"):
        RobustContrastiveLoss("hard")
    v = _unit(3, 4)
    with pytest.raises(ValueError, match="equivalent must be"):
        RobustContrastiveLoss("multi_positive")(v, v, 1.0, torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_sim"):
        RobustContrastiveLoss("soft")(v, v, 1.0, torch.eye(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, E\)"):
        RobustContrastiveLoss("none")(v, _unit(3, 5), 1.0)


def test_equivalence_from_labels():
    nan = float("nan")
    labels = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, nan], [0, 0, nan]])
    eq = equivalence_from_labels(labels)
    expected = _mask(6, [(0, 1), (2, 3)])  # NaN rows (4, 5) equal only themselves
    assert torch.equal(eq, expected)


def test_equivalence_from_text():
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    eq = equivalence_from_text(emb, threshold=0.99)
    assert torch.equal(eq, _mask(4, [(0, 1)]))
    assert torch.equal(equivalence_from_text(emb, threshold=-1.0), torch.ones(4, 4, dtype=torch.bool))


# ----------------------------------------------------------------------------------------- pair-wise KD


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_pkd_zero_when_student_equals_teacher_up_to_scale(kind):
    t = torch.randn(5, 12)
    assert PairwiseKDLoss(kind)(3.0 * t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_pkd_values_and_relation_between_kinds():
    s, t = torch.randn(7, 12), torch.randn(7, 12)
    cos = F.cosine_similarity(s, t, dim=1)
    c = PairwiseKDLoss("cosine")(s, t)
    m = PairwiseKDLoss("mse")(s, t)
    torch.testing.assert_close(c, (1 - cos).mean())
    torch.testing.assert_close(m, 2 * c)  # |a - b|^2 = 2 - 2cos on the unit sphere
    assert PairwiseKDLoss("cosine")(t, -t).item() == pytest.approx(2.0)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_pkd_gradients_reach_the_student_only(kind):
    s, t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    PairwiseKDLoss(kind)(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


# ----------------------------------------------------------------------------------------- relation KD


def test_srkd_zero_when_similarity_structures_match():
    teacher = torch.randn(8, 16)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    student = 2.5 * teacher @ rotation  # other basis and scale, same cosine structure
    assert RelationKDLoss(tau=0.1)(student, teacher).item() == pytest.approx(0.0, abs=1e-5)
    # different widths are fine: embed the teacher in a wider space
    wide = torch.cat([teacher, torch.zeros(8, 4)], dim=1)
    assert RelationKDLoss(tau=0.1)(wide, teacher).item() == pytest.approx(0.0, abs=1e-5)


def test_srkd_positive_when_structures_differ_and_matches_a_reference():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    tau = 0.2
    loss = RelationKDLoss(tau=tau)(s, t)
    assert loss.item() > 1e-3

    def dist(x):  # reference: explicit loop over j != i
        x = F.normalize(x, dim=1)
        rows = []
        for i in range(6):
            logits = torch.stack([x[i] @ x[j] / tau for j in range(6) if j != i])
            rows.append(torch.softmax(logits, 0))
        return torch.stack(rows)

    p_t, p_s = dist(t), dist(s)
    expected = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_srkd_gradients_reach_the_student_only_and_gradcheck():
    s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    loss_fn = RelationKDLoss(tau=0.5, teacher_tau=0.3)
    loss_fn(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None
    assert torch.autograd.gradcheck(lambda a: loss_fn(a, t), (s,))


def test_srkd_single_sample_is_zero_with_graph():
    s = torch.randn(1, 4, requires_grad=True)
    loss = RelationKDLoss()(s, torch.randn(1, 4))
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None


# ----------------------------------------------------------------------------------------- masked LM


def test_mask_entity_tokens_prefers_entities_and_respects_specials_and_padding():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (512, 40), generator=g)  # ~3,300 entity and ~11,500 other tokens
    ids[:, 0] = 1  # [CLS]
    attn = torch.ones_like(ids)
    attn[:, 30:] = 0
    entities = set(range(5, 15))
    masked, labels = mask_entity_tokens(
        ids,
        entities,
        mask_id=4,
        vocab_size=50,
        entity_prob=0.6,
        base_prob=0.1,
        special_ids={1},
        attention_mask=attn,
        generator=g,
    )
    sel = labels != -100
    assert torch.equal(labels[sel], ids[sel])
    assert not sel[:, 0].any() and not sel[:, 30:].any()
    is_ent = torch.isin(ids, torch.tensor(sorted(entities))) & (attn == 1)
    is_ent[:, 0] = False
    other = ~is_ent & (attn == 1)
    other[:, 0] = False
    rate_ent = sel[is_ent].float().mean().item()
    rate_other = sel[other].float().mean().item()
    # tolerances are about 5 binomial standard deviations (0.0085, 0.0028, 0.0063): any RNG stream passes,
    # a rate off by a few percentage points (e.g. entities at the base rate) does not
    assert rate_ent == pytest.approx(0.6, abs=0.04) and rate_other == pytest.approx(0.1, abs=0.015)
    assert (masked[sel] == 4).float().mean().item() == pytest.approx(0.8, abs=0.03)
    assert torch.equal(masked[~sel], ids[~sel])


def test_mask_entity_tokens_is_repeatable_under_a_generator():
    ids = torch.arange(200).view(4, 50) % 30
    a = mask_entity_tokens(ids, [3, 4], 2, 30, generator=torch.Generator().manual_seed(3))
    b = mask_entity_tokens(ids, [3, 4], 2, 30, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="entity_prob"):
        mask_entity_tokens(ids, [3], 2, 30, entity_prob=1.5)


def test_masked_lm_loss_only_counts_masked_positions():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 7, 2
    loss = MaskedLMLoss()(logits, labels)
    expected = 0.5 * (F.cross_entropy(logits[0, 1:2], labels[0, 1:2]) + F.cross_entropy(logits[1, 3:4], labels[1, 3:4]))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 1].abs().sum() > 0
    empty = MaskedLMLoss()(logits, torch.full((2, 5), -100))
    assert empty.item() == 0.0 and empty.requires_grad


# ----------------------------------------------------------------------------------------- report prompts


def test_report_prompt_loss_matches_a_hand_computation():
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = ReportPromptLoss(scale=2.0)(text, pos, neg, labels)
    # logits = 2 * (cos pos - cos neg): report 0 (1, -1) * 2, report 1 (0.6 - 0.8, 0.8 - 0.6) * 2
    logits = [(2.0, 1.0), (-2.0, 0.0), (-0.4, 0.0), (0.4, 1.0)]  # (logit, label)
    expected = sum(math.log1p(math.exp(-z)) if y else math.log1p(math.exp(z)) for z, y in logits) / 4
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_report_prompt_loss_is_the_zero_shot_score():
    """Its logits are zero-shot's own: the loss equals BCE on ``zero_shot_logits`` with the report as input."""
    from ctxray.models.zeroshot import zero_shot_logits

    text, pos, neg = _unit(5, 8, seed=1), _unit(3, 8, seed=2), _unit(3, 8, seed=3)
    labels = (torch.rand(5, 3, generator=torch.Generator().manual_seed(4)) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(zero_shot_logits(text, pos, neg, 7.0), labels)
    torch.testing.assert_close(ReportPromptLoss(7.0)(text, pos, neg, labels), expected)


def test_report_prompt_loss_ignores_masked_labels():
    text, pos, neg = _unit(4, 8, seed=5), _unit(3, 8, seed=6), _unit(3, 8, seed=7)
    labels = torch.tensor([[1.0, 0.0, float("nan")], [0.0, float("nan"), 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss_fn = ReportPromptLoss(5.0)
    base = loss_fn(text, pos, neg, labels)
    flipped = labels.clone()
    flipped[0, 2], flipped[1, 1] = 1.0, 0.0  # only the masked entries change value...
    other = labels.clone()
    other[0, 2] = other[1, 1] = float("nan")
    assert loss_fn(text, pos, neg, other).item() == base.item()
    assert loss_fn(text, pos, neg, flipped).item() != base.item()  # ...and unmasked they would count
    t = text.clone().requires_grad_(True)
    loss_fn(t, pos, neg, torch.full((4, 3), float("nan"))).backward()  # nothing known: zero, with a graph
    assert t.grad is not None and t.grad.abs().sum() == 0
    # a report whose labels are all masked gets no gradient, the others do
    t = text.clone().requires_grad_(True)
    masked_row = labels.clone()
    masked_row[2] = float("nan")
    loss_fn(t, pos, neg, masked_row).backward()
    assert t.grad[2].abs().sum() == 0 and (t.grad[[0, 1, 3]].abs().sum(dim=1) > 0).all()


def test_report_prompt_loss_gradients_reach_reports_and_prompts_and_gradcheck():
    text = _unit(4, 6, seed=8, dtype=torch.float64).requires_grad_(True)
    pos = _unit(2, 6, seed=9, dtype=torch.float64).requires_grad_(True)
    neg = _unit(2, 6, seed=10, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    loss_fn = ReportPromptLoss(3.0)
    loss_fn(text, pos, neg, labels).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (text, pos, neg))
    assert torch.autograd.gradcheck(lambda a, b, c: loss_fn(a, b, c, labels), (text, pos, neg))


def test_report_prompt_loss_decreases_on_a_toy_problem():
    """Free report and prompt vectors, labels of two findings: gradient descent drives it towards 0 and the
    zero-shot score then ranks the reports perfectly."""
    from ctxray.metrics import auroc_per_label

    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(32, 2, generator=g) > 0.5).float()
    raw_text = torch.randn(32, 8, generator=g, requires_grad=True)
    raw_prompts = torch.randn(4, 8, generator=g, requires_grad=True)  # pos0, neg0, pos1, neg1
    loss_fn = ReportPromptLoss(10.0)
    opt = torch.optim.Adam([raw_text, raw_prompts], lr=0.05)
    history = []
    for _ in range(200):
        t, p = F.normalize(raw_text, dim=1), F.normalize(raw_prompts, dim=1)
        loss = loss_fn(t, p[0::2], p[1::2], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[0] > 0.5 and history[-1] < 0.05 * history[0]
    with torch.no_grad():
        t, p = F.normalize(raw_text, dim=1), F.normalize(raw_prompts, dim=1)
        scores = (t @ p[0::2].T - t @ p[1::2].T).numpy()
    assert auroc_per_label(labels.numpy(), scores).min() == 1.0


def test_report_prompt_loss_bad_inputs():
    with pytest.raises(ValueError, match="scale"):
        ReportPromptLoss(0.0)
    text, pos = _unit(3, 4), _unit(2, 4)
    with pytest.raises(ValueError, match="labels"):
        ReportPromptLoss()(text, pos, pos, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="pos/neg"):
        ReportPromptLoss()(text, pos, _unit(3, 4), torch.zeros(3, 2))


def test_balanced_cell_bce_weighs_lesion_and_background_cells_alike():
    cells = torch.zeros(1, 2, 2, 4, 4)
    cells[0, 0, 0, 0, 0] = 1.0  # one lesion cell among 32 of label 0
    cells[0, 1] = float("nan")  # label 1: present somewhere unknown
    logits = torch.zeros_like(cells)
    logits[0, 0] = -3.0
    logits[0, 1] = 50.0  # an unknown label's logits do not count
    got = balanced_cell_bce(logits, cells)
    pos = F.binary_cross_entropy_with_logits(torch.tensor(-3.0), torch.tensor(1.0))
    neg = F.binary_cross_entropy_with_logits(torch.tensor(-3.0), torch.tensor(0.0))
    assert torch.isclose(got, (pos + neg) / 2)  # a plain mean would be (pos + 31 neg) / 32
    logits.requires_grad_(True)
    balanced_cell_bce(logits, cells).backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 0, 0, 0, 0] < 0
    assert balanced_cell_bce(torch.zeros(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), float("nan"))) == 0
    with pytest.raises(ValueError, match="balanced_cell_bce"):
        balanced_cell_bce(torch.zeros(1, 2, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2))
