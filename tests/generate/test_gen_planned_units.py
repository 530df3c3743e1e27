"""The planned generator's parts: thresholds, sentence bank, contradiction and laterality checks."""

from __future__ import annotations

import numpy as np
import pytest

from ctxray.generate.checks import contradictions, laterality_agreement, stated_sides
from ctxray.generate.plan import Plan, SideProbe, f1_thresholds, plans_from_reports, shuffled_plans
from ctxray.generate.realise import SentenceBank, sentences_of
from ctxray.labeler import label_report

NORMAL = ("Heart size is normal. No pleural effusion or thickening was detected. No pulmonary nodule was detected. "
          "No atelectasis. Bones are normal.", "No significant pathology was detected in the thorax.")
TRAIN = [
    NORMAL,
    ("Heart size is normal. Pleural effusion is present on the left, 20 mm at its deepest. No pulmonary nodule "
     "was detected. Atelectatic changes are seen in the left lower lobe. Bones are normal.",
     "Left pleural effusion. Atelectasis in the left lower lobe."),
    ("Heart size is normal. Small right pleural effusion measuring 12 mm in depth is seen. A 9 mm solid nodule is "
     "seen in the right upper lobe. No atelectasis. Bones are normal.",
     "Right pleural effusion. Pulmonary nodule in the right upper lobe; follow-up is recommended."),
    ("Cardiomegaly is present. No pleural effusion or thickening was detected. No pulmonary nodule was detected. "
     "No atelectasis. Bones are normal.", "Cardiomegaly."),
]


@pytest.fixture(scope="module")
def bank() -> SentenceBank:
    return SentenceBank([f for f, _ in TRAIN], [i for _, i in TRAIN], NORMAL)


def test_f1_thresholds_pick_the_best_cut_and_beta_below_one_is_stricter() -> None:
    y = np.array([[1], [1], [0], [1], [0], [0]], dtype=float)
    s = np.array([[0.9], [0.8], [0.7], [0.6], [0.2], [0.1]])
    # cuts: 0.9 -> F1 .5, 0.8 -> .8, 0.7 -> .667, 0.6 -> .857 (best), 0.2 -> .75
    assert f1_thresholds(y, s)[0] == pytest.approx(0.6)
    assert f1_thresholds(y, s, beta=0.3)[0] == pytest.approx(0.8)  # precision 1 wins when it weighs more
    assert np.isinf(f1_thresholds(np.zeros((3, 1)), s[:3])[0])  # no positives: never planned


def test_empty_plan_gives_the_skeleton_report(bank) -> None:
    findings, impression = bank.realise(Plan())
    assert (findings, impression) == NORMAL


def test_planned_finding_replaces_its_negation_on_the_planned_side(bank) -> None:
    for side in ("left", "right"):
        findings, impression = bank.realise(Plan(("Pleural effusion",), {"Pleural effusion": side}))
        text = f"{findings} {impression}"
        status = label_report(text)
        assert status["Pleural effusion"] == "positive"
        assert status["Lung nodule"] == "negative"  # untouched slots stay normal
        assert stated_sides(text)["Pleural effusion"] == {side}
        assert contradictions(text) == []
        assert "No pleural effusion" not in text


def test_bilateral_plan_is_written_from_two_one_sided_sentences(bank) -> None:
    findings, _ = bank.realise(Plan(("Pleural effusion",), {"Pleural effusion": "bilateral"}))
    assert stated_sides(findings)["Pleural effusion"] == {"left", "right"}


def test_sentences_stating_unplanned_findings_are_never_used(bank) -> None:
    # the left-effusion training report also states atelectasis: its sentences must not leak it
    plan = Plan(("Pleural effusion",), {"Pleural effusion": "left"})
    text = " ".join(bank.realise(plan, neighbours=[1]))
    assert label_report(text)["Atelectasis"] in ("negative", "absent")


def test_every_plan_of_the_training_reports_comes_back_without_contradiction(bank) -> None:
    from ctxray.data.text import report_text

    plans = plans_from_reports([report_text(f, i) for f, i in TRAIN])
    for plan in plans + shuffled_plans(plans, 0):
        text = " ".join(bank.realise(plan))
        assert contradictions(text) == []
        got = plans_from_reports([text])[0]
        assert set(got.labels) == set(plan.labels)
        for label in plan.labels:
            assert got.sides.get(label) == plan.sides.get(label)


def test_contradiction_and_laterality_checks_can_fail() -> None:
    assert contradictions("No pleural effusion. Small left pleural effusion is seen.") == ["Pleural effusion"]
    assert contradictions("Small left pleural effusion is seen. No atelectasis.") == []
    truth = [{"lesions": [{"label": "Pleural effusion", "laterality": "right"}]},
             {"lesions": [{"label": "Pleural effusion", "laterality": "left"},
                          {"label": "Pleural effusion", "laterality": "right"}]}]
    lat = laterality_agreement(["Small left pleural effusion is seen.", "Bilateral pleural effusions."], truth)
    assert lat["n"] == 2 and lat["exact"] == pytest.approx(0.5)
    assert lat["per_label"]["Pleural effusion"]["n"] == 2


def test_sentence_split_keeps_case_and_abbreviations() -> None:
    assert sentences_of("Heart is normal. Calcified plaques (LAD and RCA). No effusion.") == [
        "Heart is normal.", "Calcified plaques (LAD and RCA).", "No effusion."]


def test_impression_lists_findings_in_the_training_reports_usual_order() -> None:
    nodule = "Pulmonary nodule in the left upper lobe; follow-up is recommended."
    train = [NORMAL,  # two reports list cardiomegaly first, one lists it last
             ("Cardiomegaly is present. A 9 mm solid nodule is seen in the left upper lobe.",
              f"Cardiomegaly. {nodule}"),
             ("Cardiomegaly is present. A 7 mm solid nodule is seen in the left upper lobe.",
              f"Cardiomegaly. {nodule}"),
             ("Cardiomegaly is present. A 5 mm solid nodule is seen in the left lower lobe. Atelectatic changes are "
              "seen in the left lower lobe.", "Pulmonary nodule in the left lower lobe; follow-up is recommended. "
              "Atelectasis in the left lower lobe. Cardiomegaly.")]
    bank = SentenceBank([f for f, _ in train], [i for _, i in train], NORMAL)
    plan = Plan(("Cardiomegaly", "Lung nodule"), {"Lung nodule": "left"})
    for neighbours in ([], [3], [1]):  # the last report lists the nodule first: its order must not leak
        _, impression = bank.realise(plan, neighbours=neighbours)
        assert impression.startswith("Cardiomegaly.") and "nodule" in impression, (neighbours, impression)


def _sided_features(n: int, signal: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Left-third and right-third features where a lesion raises channel 0 of its own side; the mirror swaps them."""
    rng = np.random.default_rng(seed)
    side = rng.integers(0, 2, n)
    left, right = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    left[side == 0, 0] += signal
    right[side == 1, 0] += signal
    targets = np.stack([side == 0, side == 1], axis=1).astype(float)[:, None, :]  # (N, 1 label, 2)
    truth = [("left", "right")[s] for s in side]
    return np.concatenate([left, right], 1), np.concatenate([right, left], 1), targets, truth


def test_side_probe_reads_the_lesion_side_and_a_mirror_image_swaps_it() -> None:
    x, x_mirror, targets, truth = _sided_features(300, 3.0, seed=0)
    probe = SideProbe().fit(x[:200], x_mirror[:200], targets[:200])
    got = [probe.side(x[i], 0) for i in range(200, 300)]
    mirrored = [probe.side(x_mirror[i], 0) for i in range(200, 300)]
    assert np.mean([g == t for g, t in zip(got, truth[200:])]) >= 0.9
    assert np.mean([g == t for g, t in zip(mirrored, truth[200:])]) <= 0.1
    # control: features that carry no side (no lesion signal) give chance
    x0, x0_mirror, targets0, truth0 = _sided_features(300, 0.0, seed=1)
    control = SideProbe().fit(x0[:200], x0_mirror[:200], targets0[:200])
    hits = np.mean([control.side(x0[i], 0) == t for i, t in zip(range(200, 300), truth0[200:])])
    assert 0.3 <= hits <= 0.7


def test_swap_halves_removes_a_one_sided_lesion_or_doubles_it() -> None:
    import torch

    from ctxray.generate.planned import swap_halves

    x = torch.zeros(1, 1, 4, 6, 8)
    x[..., 1:3, 2:4, 1:3] = 1.0  # a "lesion" in the low half of the last axis
    gone, doubled = swap_halves(x, "low"), swap_halves(x, "high")
    assert gone.sum() == 0  # the low half is now the mirror of the (empty) high half
    assert doubled.sum() == 2 * x.sum() and torch.equal(doubled[..., :4], x[..., :4])
    assert torch.equal(doubled[..., 4:], torch.flip(x[..., :4], dims=[-1]))
    assert torch.equal(x.sum(), torch.tensor(8.0))  # the input is not modified


def test_side_probe_reads_per_label_features_with_the_mirror_swapping_them() -> None:
    """side_features='swap': per label the score drops when the low / high half is replaced, (N, L, 2); a lesion on
    the low side makes the first drop large. Label 1 carries no side signal: chance."""
    rng = np.random.default_rng(0)
    n = 300
    side = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2, 2))
    x[np.arange(n), 0, side] += 3.0  # label 0: the drop of the lesion's own half
    targets = np.repeat(np.stack([side == 0, side == 1], axis=1).astype(float)[:, None, :], 2, axis=1)
    probe = SideProbe().fit(x[:200], x[:200, :, ::-1], targets[:200])
    truth = [("left", "right")[s] for s in side[200:]]
    got = [probe.side(x[i], 0) for i in range(200, 300)]
    assert np.mean([g == t for g, t in zip(got, truth)]) >= 0.9
    mirrored = [probe.side(x[i, :, ::-1], 0) for i in range(200, 300)]
    assert np.mean([g == t for g, t in zip(mirrored, truth)]) <= 0.1
    control = [probe.side(x[i], 1) for i in range(200, 300)]
    assert 0.3 <= np.mean([g == t for g, t in zip(control, truth)]) <= 0.7


@pytest.mark.parametrize("kind", ["swap", "hemithorax"])
def test_a_generator_folder_reloads_with_the_view_its_side_features_need(tmp_path, kind) -> None:
    """save_planned / load_planned keep side_features='swap' (or 'hemithorax'): the reloaded view computes the
    swapped features (the hemithorax quantiles) and the reloaded generator plans the same findings and sides."""
    import torch
    from torch import nn

    from ctxray.generate.planned import (
        PlannedConfig,
        VolumeView,
        encode_volumes,
        fit_planned,
        load_planned,
        save_planned,
    )
    from ctxray.models.registry import create_volume_encoder

    torch.manual_seed(0)
    encoder = create_volume_encoder("resnet3d_tiny", input_shape=(16, 32, 32)).eval()
    view = VolumeView(encoder, nn.Linear(encoder.out_dim, 8, bias=False), swap=kind == "swap",
                      hemithorax=kind == "hemithorax")
    vols = [torch.rand(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    loaders = [lambda v=v: v for v in vols]
    feats, flipped = encode_volumes(view, loaders), encode_volumes(view, loaders, flip=True)
    findings = ["Left pleural effusion. Cardiomegaly is present.", "No pleural effusion. Heart size is normal.",
                "Right pleural effusion. Heart size is normal."] * 4
    impressions = ["Left pleural effusion.", "Normal.", "Right pleural effusion."] * 4
    gen = fit_planned(feats, flipped, findings, impressions, (findings[1], impressions[1]),
                      PlannedConfig(folds=2, wording="frequent", side_features=kind))
    gen.thresholds = np.zeros_like(gen.thresholds)
    desc = {"name": "resnet3d_tiny", "kwargs": {"input_shape": [16, 32, 32]}, "source": "test", "init": "random"}
    save_planned(tmp_path / "G", gen, view, desc, (findings, impressions), (findings[1], impressions[1]), None)
    again, view2, _ = load_planned(tmp_path / "G")
    assert again.cfg.side_features == kind and view2.swap == (kind == "swap") and view2.hemithorax == (kind != "swap")
    feats2 = encode_volumes(view2, loaders)
    key = "swap_high.embedding" if kind == "swap" else "hemithorax"
    assert np.allclose(feats2[key], feats[key], atol=1e-5)
    assert [p.to_dict() for p in again.plan(feats2)] == [p.to_dict() for p in gen.plan(feats)]


def test_hemithorax_quantiles_see_which_third_is_denser_and_swap_under_a_mirror() -> None:
    import torch

    from ctxray.generate.planned import HEMI_QUANTILES, hemithorax_quantiles

    q = len(HEMI_QUANTILES)
    x = torch.zeros(2, 1, 8, 12, 18)
    x[0, 0, :, 6:, 0:6] = 1.0  # volume 0: the low third's second half of the H axis is all dense
    x[1, 0, 2:6, 0:6, 12:18] = 1.0  # volume 1: half of the high third's first half of the H axis
    f = hemithorax_quantiles(x)
    assert f.shape == (2, 4 * q)
    blocks = f.view(2, 4, q)  # low third [first half, second half], high third [first half, second half]
    assert torch.equal(blocks[0, 1], torch.ones(q)) and blocks[0, [0, 2, 3]].abs().sum() == 0
    assert blocks[1, 2, -1] == 1 and blocks[1, 2, 0] == 0 and blocks[1, [0, 1, 3]].abs().sum() == 0
    mirrored = hemithorax_quantiles(torch.flip(x, dims=[-1])).view(2, 4, q)
    assert torch.equal(mirrored[:, [2, 3]], blocks[:, [0, 1]]) and torch.equal(mirrored[:, [0, 1]], blocks[:, [2, 3]])
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        hemithorax_quantiles(x[:, 0])


def test_hemithorax_side_features_put_the_effusion_on_its_side() -> None:
    """side_features='hemithorax' through fit_planned and plan: fluid painted posterior in one third of the volume,
    the report naming that side; new volumes get the side of their fluid, their mirror images the other side,
    while an encoder whose feature map carries nothing (zeros) leaves the thirds probe at chance."""
    import torch
    from torch import nn

    from ctxray.generate.planned import PlannedConfig, VolumeView, encode_volumes, fit_planned

    class Blank(nn.Module):
        out_dim = 4

        def feature_map(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 4, 2, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3, 4)).repeat(1, 4)

    gen_rng = torch.Generator().manual_seed(0)
    sides = [i % 2 for i in range(60)]

    def volume(side: int) -> torch.Tensor:
        v = 0.1 * torch.rand(1, 1, 8, 12, 18, generator=gen_rng)
        cols = slice(0, 6) if side == 0 else slice(12, 18)
        depth = int(torch.randint(3, 6, (1,), generator=gen_rng))
        v[..., :, 12 - depth:, cols] += 0.6  # fluid: the posterior rows of one third
        return v

    vols = [volume(s) for s in sides]
    loaders = [lambda v=v: v for v in vols]
    view = VolumeView(Blank(), nn.Identity(), hemithorax=True)
    assert "hemithorax" not in VolumeView(Blank(), nn.Identity()).features(vols[0])  # a sort per voxel: on request
    train, test = slice(0, 40), slice(40, 60)
    feats, flipped = encode_volumes(view, loaders[train]), encode_volumes(view, loaders[train], flip=True)
    word = ("Left", "Right")
    findings = [f"{word[s]} pleural effusion is present. Heart size is normal." for s in sides[train]]
    impressions = [f"{word[s]} pleural effusion." for s in sides[train]]
    truth = [word[s].lower() for s in sides[test]]
    got = {}
    for kind in ("hemithorax", "thirds"):
        gen = fit_planned(feats, flipped, findings, impressions, (findings[0], impressions[0]),
                          PlannedConfig(folds=2, wording="frequent", side_features=kind))
        gen.gate_threshold = float("inf")
        for name, f in (("new", encode_volumes(view, loaders[test])),
                        ("mirror", encode_volumes(view, loaders[test], flip=True))):
            plans = gen.plan(f)
            got[kind, name] = np.mean([p.sides.get("Pleural effusion") == t for p, t in zip(plans, truth)])
            records = [{"lesions": [{"label": "Pleural effusion", "laterality": t}]} for t in truth]
            agree = gen.side_agreement(f, records)
            assert agree["n"] == 20 and agree["per_label"]["Pleural effusion"]["n"] == 20
            assert agree["exact"] == pytest.approx(got[kind, name])  # every volume's effusion is planned here
            assert agree["prior_exact"] == 0  # half the training effusions on each side: the rates say bilateral
    assert got["hemithorax", "new"] >= 0.9 and got["hemithorax", "mirror"] <= 0.1
    assert got["thirds", "new"] <= 0.6  # the blank feature map knows no side (its probe writes "bilateral")
