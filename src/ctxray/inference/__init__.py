"""Using a model on a scan: the model folder (export/load), the Python API, predict, heatmaps, HTML.

``ctxray.load(MODEL_DIR)`` returns a :class:`ctxray.inference.api.CTModel`; see the README section
"Using a model on a scan". Names are imported lazily so ``ctxray.inference.html`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CTModel": "ctxray.inference.api", "Finding": "ctxray.inference.api", "load": "ctxray.inference.api",
    "ModelFolderError": "ctxray.inference.folder", "NoDecoderError": "ctxray.inference.api",
    "export_model": "ctxray.inference.export",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ctxray.inference' has no attribute {name!r}")
