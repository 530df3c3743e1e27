"""Report generation (``ctxray generate``): chest-CT reports from the CT encoder.

- ``train``, ``decoder``, ``search``, ``run``: a learnt decoder (a small transformer on the frozen encoder's
  feature map; beam search) trained on the cache's reports, its folder, and running it on volumes.
- ``planned``, ``plan``, ``realise``, ``tune``, ``run_planned``: the planned generator (findings decided by
  probes on the encoder, sentences copied from training reports).
- ``data``: report sections and cached volumes of a split; ``metrics``: NLG metrics and clinical efficacy
  (``score_reports``); ``checks``, ``compare``, ``iu_validation``: checks of the generated text.
"""
