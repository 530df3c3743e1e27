"""The synthetic chest world: deterministic CT-report pairs and an X-ray gallery with known truth.

``generate_world(out, preset, seed)`` (:mod:`ctxray.synth.world`) writes CT volumes in CT-RATE's
corrected-release layout with reports, labels and metadata CSVs, a per-lesion ground truth, and a
gallery of frontal radiographs of other patients with X-ray reports. Modules:

- ``canvas``: voxel grid in patient millimetres and the shapes painted on it;
- ``anatomy``: a patient's normal chest; ``atlas``: where lesions may go;
- ``findings``: label prevalence and co-occurrence; ``lesions``, ``lesions_lung``: one builder per label;
- ``render``: CT volumes (HU) and radiographs (projections); ``reports``: CT and X-ray report text;
- ``scans``, ``xray_gallery``, ``writers``, ``world``: file layout and byte-deterministic writing.
"""
