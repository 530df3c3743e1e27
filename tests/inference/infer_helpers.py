"""Helpers for the inference tests: a tiny trained-looking run folder, a chest-like volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPORTS = [
    "There is a lung nodule in the right upper lobe. No pleural effusion.",
    "The chest CT shows no lung nodule. Heart size is normal. No pericardial effusion.",
    "Findings are consistent with emphysema and atelectasis. No consolidation.",
    "Cardiomegaly with pericardial effusion. Coronary artery wall calcification.",
]


def make_hf_tower(folder: Path, tok, seed: int = 0) -> Path:
    """A tiny random Hugging Face BERT folder (weights, config, ``tok``'s files, a licence, a README)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=48, max_position_embeddings=64), add_pooling_layer=False)
    model.save_pretrained(folder)
    tok.save(folder)
    (folder / "LICENSE").write_text("Test licence: use freely.\n")
    (folder / "README.md").write_text("A tiny random BERT for tests.\n")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"not needed to load")
    return folder


def make_run(root: Path, seed: int = 0, hf_tower: bool = False) -> Path:
    """A run folder as ``ctxray train`` writes it (random weights; tiny ViT; a cache with spec.json).

    With ``hf_tower`` the report tower is ``kind="hf"`` built from ``root/hf_tower`` (a tiny random BERT),
    which the run's config names by absolute path, as training writes it today.
    """
    import torch

    from ctxray.data.spec import get_preset
    from ctxray.labels import load_labels
    from ctxray.models.dual import DualEncoder, DualEncoderConfig
    from ctxray.models.text import TextEncoderConfig, Tokenizer
    from ctxray.train.checkpoint import save_checkpoint
    from ctxray.train.config import DataConfig, TrainConfig

    labels = load_labels()
    prompts = [p for n in labels.names for side in labels.prompts(n) for p in side]
    tok = Tokenizer.train(REPORTS + prompts, vocab_size=400, min_frequency=1)
    cache = root / "cache"
    cache.mkdir(parents=True)
    get_preset("tiny").save(cache / "spec.json")
    text = TextEncoderConfig(hidden=32, layers=1, heads=2, max_length=48, vocab_size=tok.vocab_size)
    if hf_tower:
        hf = make_hf_tower(root / "hf_tower", tok, seed)
        text = TextEncoderConfig(kind="hf", hf_path=str(hf.resolve()), pooling="mean", max_length=48)
    cfg = TrainConfig(model=DualEncoderConfig(encoder="vit3d_tiny", input_shape=(16, 32, 32), embed_dim=32,
                                              text=text),
                      data=DataConfig(cache=str(cache)))
    torch.manual_seed(seed)
    model = DualEncoder(cfg.model).eval()
    run = root / "run"
    save_checkpoint(run / "checkpoints" / "best", model, tok, cfg, metrics={"val_zero_shot_auc": 0.61})
    return run


def synthetic_ct(shape=(20, 40, 44), seed: int = 0) -> np.ndarray:
    """A small chest-like HU volume (body, lungs, a nodule) on the RAS (D, H, W) grid."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, d), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 <= 1
    hu[body] = 40.0
    for cx in (-0.45, 0.45):
        hu[((y / 0.55) ** 2 + ((x - cx) / 0.35) ** 2 <= 1) & (np.abs(z) < 0.9)] = -850.0
    hu[(z - 0.2) ** 2 + (y + 0.1) ** 2 + (x - 0.45) ** 2 <= 0.02] = 30.0
    return (hu + rng.normal(0, 15, shape)).astype(np.float32)


def write_dicom_series(folder: Path, hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                       descending: bool = False, origin: tuple[float, float, float] = (37.5, -12.0, -80.0),
                       rescale: tuple[float, float] = (2.0, -10.0)) -> np.ndarray:
    """Write a RAS (D, H, W) HU volume as an axial CT series with pydicom (int16, LPS).

    Written here rather than with ``ctxray.data.dicom.write_ct_series`` so the reader is checked
    against an independent writer. Ascending (default): files are named in reverse slice order;
    ``descending``: file and instance order run head to feet (``im000.dcm`` is the most superior slice).

    Args:
        origin: LPS mm of the first voxel of RAS slice 0 (the most inferior).
        rescale: (RescaleSlope, RescaleIntercept) of the stored values.

    Returns:
        The LPS mm position of the first pixel of the most superior slice.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    sz, sy, sx = spacing_zyx
    d, h, w = hu.shape
    slope, intercept = rescale
    stored = np.rint((hu - intercept) / slope).astype(np.int16)
    series, study = generate_uid(), generate_uid()
    first = np.asarray(origin, dtype=float)
    for k in range(d):  # k: RAS slice index (inferior to superior)
        meta = FileMetaDataset()
        uid = generate_uid()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, uid, "CT"
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series, study
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID = "TEST^PATIENT", "ID12345"
        # columns run to patient-left (+x LPS) = RAS x decreasing; rows to posterior = RAS y decreasing
        ds.ImagePositionPatient = [float(v) for v in first + [0.0, 0.0, k * sz]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [sy, sx]
        ds.SliceThickness = sz
        ds.InstanceNumber = d - k
        ds.Rows, ds.Columns = h, w
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(stored[k, ::-1, ::-1]).tobytes()
        name = f"im{d - 1 - k:03d}.dcm" if descending else f"slice_{d - k:03d}.dcm"
        ds.save_as(str(folder / name), enforce_file_format=True)
    return first + [0.0, 0.0, (d - 1) * sz]


def write_nifti(path: Path, hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> None:
    """Write a RAS (D, H, W) HU volume as NIfTI (data x, y, z; diagonal RAS affine)."""
    import nibabel as nib

    sz, sy, sx = spacing_zyx
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-100.0, 20.0, 5.0]
    img = nib.Nifti1Image(np.rint(hu).astype(np.int16).transpose(2, 1, 0), affine)
    nib.save(img, str(path))


class ConvToy(nn.Module):
    """Feature map = 1x1x1 conv of the input with channel weights (1, -1, .5) and a constant channel;
    embedding = normalised spatial mean. Score along e0 - e1 grows with the mean intensity, so the
    class activation map is the input's bright region."""

    def __init__(self, tokens: bool = False):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.5, 0.0]).view(4, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0]))
        self.pool = nn.AvgPool3d(2)
        self.tokens = tokens
        self.norm = nn.Identity()

    def scale(self):
        return torch.tensor(10.0)

    def volume_feature_map(self, x):
        return self.pool(self.conv(x))

    def encode_volume(self, x):
        fm = self.volume_feature_map(x)  # (B, 4, d, h, w)
        if self.tokens:  # ViT-like: tokens (B, N, C) out of a module, then mean
            t = self.norm(fm.flatten(2).transpose(1, 2))
            return F.normalize(t.mean(1), dim=-1)
        return F.normalize(fm.mean(dim=(2, 3, 4)), dim=-1)
