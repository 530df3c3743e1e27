"""Models: 3D volume encoders, the report tower, the CT-report dual encoder, zero-shot scoring.

- ``registry``: ``create_volume_encoder(name)`` / ``list_encoders()``; every family has a ``*_tiny``.
- ``vit3d``, ``vit3d_axial``, ``resnet3d``, ``i3resnet``: the volume encoder families.
- ``text``: the WordPiece tokenizer and the BERT-style (or Hugging Face) report tower.
- ``hf_folder``: copying a Hugging Face tower's folder with what loading needs.
- ``dual``: ``DualEncoder`` (volume and report towers into one space, KD head, MLM head).
- ``zeroshot``: prompt-ensemble zero-shot scoring from any ``encode_text`` (the X-ray expert and the CT model).
Models return features, never a loss (losses are :mod:`ctxray.losses`).
"""
