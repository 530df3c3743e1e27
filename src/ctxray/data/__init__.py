"""Data: readers, preprocessing and the volume cache.

- ``volume``: the ``Volume`` / ``RawVolume`` types and the RAS reorientation every reader shares.
- ``nifti``, ``dicom``, ``radchest``: the format readers; ``readers``: the dispatcher over them
  (``load_volume``, ``read_volume_raw``: NIfTI / DICOM / ``.npz`` -> HU on the RAS ``(D, H, W)`` grid).
- ``dicom``: series grouping, sorting, validation, redaction of patient identifiers.
- ``ctrate``, ``radchest``, ``radchest_labels``: CT-RATE (both releases) and RAD-ChestCT layouts, reports and
  labels (RAD-ChestCT's mapped onto the CT-RATE names).
- ``xray``, ``iu``: the X-ray gallery and the Indiana University reports; ``text``: report text.
- ``spec``, ``resample``: the versioned preprocessing spec (presets, apply / invert) and its resampler.
- ``ingest``, ``cache``: inputs -> work items -> a resumable, checksummed cache (``ctxray preprocess``);
  ``ids``: the volume ids every stage derives from names.
- ``cachedir``: THE reader of a cache folder (spec, manifest rows by split, volume paths, scan ids).
- ``dataset``: ``CTCacheDataset`` over a cache, with seeded augmentation.
"""
