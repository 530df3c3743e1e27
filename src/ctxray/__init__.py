"""ctxray: chest-CT understanding by distilling knowledge from X-ray expert models (BIUD)."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(model_dir):
    """Load an exported model folder (see ``ctxray export``); returns a ``ctxray.inference.CTModel``."""
    from ctxray.inference.api import load as _load

    return _load(model_dir)
