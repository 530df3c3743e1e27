"""Volume ids: the filesystem-safe id preprocessing gives each volume, and the id of a volume file name.

Every stage that meets a CT by name (preprocess, retrieval targets, report generation) derives its id here,
so ``train_1_a_1.nii.gz``, ``train_1_a_1`` and the cache's ``volumes/train_1_a_1.npy`` are one CT.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy")


def safe_id(text: str) -> str:
    """A filesystem-safe id for a name: unchanged rules for ASCII names; others ASCII-folded plus a hash.

    A non-ASCII name is folded (``Müller`` -> ``Muller``) and gets ``-`` + 8 hex digits of the SHA-256
    of its NFC form, so names that differ only in non-ASCII characters (``Müller``/``Möller``,
    ``胸部1``/``腹部1``) stay distinct, and an NFD file name (macOS) gives the same id as its NFC twin.
    """
    if text.isascii():
        return _SAFE.sub("_", text).strip("_") or "volume"
    nfc = unicodedata.normalize("NFC", text)
    folded = unicodedata.normalize("NFKD", nfc).encode("ascii", "ignore").decode()
    stem = _SAFE.sub("_", folded).strip("_") or "volume"
    return f"{stem}-{hashlib.sha256(nfc.encode()).hexdigest()[:8]}"


def strip_volume_suffix(name: str) -> str:
    """A file name without its volume suffix: ``train_1_a_1.nii.gz`` -> ``train_1_a_1``."""
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def ct_id(name: str) -> str:
    """The cache id of a volume name or id: suffix stripped, then :func:`safe_id` (a cache id is unchanged)."""
    return safe_id(strip_volume_suffix(name))
