"""Data: readers, preprocessing and the volume cache.

- ``readers``: NIfTI / DICOM / ``.npz`` -> HU on the RAS ``(D, H, W)`` grid (``load_volume``).
- ``dicom``: series grouping, sorting, validation, redaction of patient identifiers.
- ``ctrate``, ``radchest``: CT-RATE (both releases) and RAD-ChestCT layouts, reports and labels.
- ``xray``, ``iu``: the X-ray gallery and the Indiana University reports; ``text``: report text.
- ``spec``, ``resample``: the versioned preprocessing spec (presets, apply / invert) and its resampler.
- ``ingest``, ``cache``: inputs -> work items -> a resumable, checksummed cache (``ctxray preprocess``).
- ``dataset``: ``CTCacheDataset`` over a cache, with seeded augmentation.
"""
