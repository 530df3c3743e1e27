"""A Hugging Face report tower's folder travels with what loading needs, never as pickles."""

from __future__ import annotations

import torch


def test_a_tower_with_pickled_weights_only_travels_as_safetensors(tmp_path):
    from transformers import AutoModel, BertConfig, BertModel

    from ctxray.models.hf_folder import copy_text_backbone, tower_licence

    src = tmp_path / "src"
    model = BertModel(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=16), add_pooling_layer=False)
    model.save_pretrained(src)
    (src / "model.safetensors").unlink()  # an older folder: pickled weights only
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    names = copy_text_backbone(src, tmp_path / "dest", model)
    assert "model.safetensors" in names and "pytorch_model.bin" not in names
    back = AutoModel.from_pretrained(str(tmp_path / "dest"), local_files_only=True)
    assert tower_licence(tmp_path / "dest") is None
    (src / "README.md").write_text("---\nlanguage: en\nlicense: apache-2.0\n---\n# A model\n")
    assert tower_licence(src) == "apache-2.0"
    loaded = back.state_dict()
    for k, a in model.state_dict().items():
        assert a.equal(loaded[k]), k
