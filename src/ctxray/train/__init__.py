"""Training the CT-report dual encoder: config, objective, loop, checkpoints.

``ctxray.train.loop.train(config, out_dir)`` runs a training; ``ctxray.train.checkpoint.load_model(run)``
rebuilds the trained model for evaluation, generation and export.
"""
