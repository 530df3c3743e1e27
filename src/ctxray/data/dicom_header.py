"""A DICOM header parser for the plain case: Part-10 files in implicit or explicit VR little endian.

It walks the data elements of one file up to the pixel data and keeps only the tags the series reader needs,
decoded as pydicom decodes them; the pixel data's offset and length are kept so the pixels are read later with
one ``readinto``, never parsed twice. Anything else (no preamble, another transfer syntax, a value that is
not plain printable ASCII, an unexpected VR or multiplicity, a truncated file) returns ``None`` and the caller
reads the file with pydicom, so this module changes speed, never results (``tests/data/test_data_dicom.py``
compares it with pydicom on every file of pydicom's test set it accepts). Importing pydicom costs more than
reading a 40-slice series this way.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

RAW_SYNTAXES = {"1.2.840.10008.1.2": False, "1.2.840.10008.1.2.1": True}  # UID -> explicit VR
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# (group, element) -> (keyword, VR) of the tags the series reader uses
TAGS = {
    (0x0008, 0x0005): ("SpecificCharacterSet", "CS"), (0x0008, 0x0008): ("ImageType", "CS"),
    (0x0008, 0x0050): ("AccessionNumber", "SH"), (0x0008, 0x0060): ("Modality", "CS"),
    (0x0008, 0x0080): ("InstitutionName", "LO"), (0x0008, 0x0081): ("InstitutionAddress", "ST"),
    (0x0008, 0x0090): ("ReferringPhysicianName", "PN"), (0x0008, 0x1010): ("StationName", "SH"),
    (0x0008, 0x1050): ("PerformingPhysicianName", "PN"), (0x0008, 0x1070): ("OperatorsName", "PN"),
    (0x0010, 0x0010): ("PatientName", "PN"), (0x0010, 0x0020): ("PatientID", "LO"),
    (0x0010, 0x0030): ("PatientBirthDate", "DA"), (0x0010, 0x1000): ("OtherPatientIDs", "LO"),
    (0x0020, 0x000E): ("SeriesInstanceUID", "UI"), (0x0020, 0x0032): ("ImagePositionPatient", "DS"),
    (0x0020, 0x0037): ("ImageOrientationPatient", "DS"), (0x0028, 0x0002): ("SamplesPerPixel", "US"),
    (0x0028, 0x0004): ("PhotometricInterpretation", "CS"), (0x0028, 0x0008): ("NumberOfFrames", "IS"),
    (0x0028, 0x0010): ("Rows", "US"), (0x0028, 0x0011): ("Columns", "US"), (0x0028, 0x0030): ("PixelSpacing", "DS"),
    (0x0028, 0x0100): ("BitsAllocated", "US"), (0x0028, 0x0101): ("BitsStored", "US"),
    (0x0028, 0x0103): ("PixelRepresentation", "US"), (0x0028, 0x1052): ("RescaleIntercept", "DS"),
    (0x0028, 0x1053): ("RescaleSlope", "DS"),
}
_ONE_VALUE = {"Modality", "SeriesInstanceUID", "PhotometricInterpretation", "NumberOfFrames", "RescaleIntercept",
              "RescaleSlope", "SpecificCharacterSet"}
_PIXEL_DATA = (0x7FE0, 0x0010)
_HEAD = 1 << 16


class _Unsupported(Exception):
    """This file is not the plain case: read it with pydicom."""


class FastHeader(dict):
    """Keyword -> value as pydicom returns it (str, list of str, float list, int), plus where the pixels are.

    ``get``/``in`` work as on a pydicom Dataset for the kept tags; ``pixel_offset``/``pixel_length`` locate the
    pixel data in the file (None when absent), ``transfer_syntax`` is the file's UID.
    """

    transfer_syntax: str = ""
    pixel_offset: int | None = None
    pixel_length: int = 0


def _text(raw: bytes) -> str:
    if any(b < 0x20 or b > 0x7E for b in raw.rstrip(b"\x00 ")):  # non-ASCII, escapes, control characters
        raise _Unsupported
    return raw.decode("ascii")


def _decode(keyword: str, vr: str, raw: bytes):
    if vr == "US":
        if len(raw) != 2:
            raise _Unsupported
        return struct.unpack("<H", raw)[0]
    text = _text(raw).rstrip(" \x00")
    if vr == "ST":
        return text
    values = text.split("\\")
    if vr in ("DS", "IS"):
        try:
            nums = [float(v) for v in values] if vr == "DS" else [int(v) for v in values]
        except ValueError:
            raise _Unsupported from None
        if keyword in _ONE_VALUE:
            if len(nums) != 1:
                raise _Unsupported
            return nums[0]
        return nums
    if vr == "PN" and "=" in text:  # component groups: leave them to pydicom's PersonName
        raise _Unsupported
    if keyword in _ONE_VALUE:
        if len(values) != 1 or not values[0]:
            raise _Unsupported
        return values[0]
    return values[0] if len(values) == 1 else values


class _Reader:
    """The bytes of one file: its first 64 KiB, all of it once a header runs past them."""

    def __init__(self, f, size: int) -> None:
        self.f, self.size = f, size
        self.data = f.read(_HEAD)

    def need(self, end: int) -> None:
        if end > len(self.data) and len(self.data) < self.size:
            self.data += self.f.read()
        if end > len(self.data):
            raise _Unsupported  # truncated

    def element(self, pos: int, explicit: bool) -> tuple[int, int, bytes, int, int]:
        """(group, element, VR, value offset, value length) of the element at ``pos``."""
        self.need(pos + 8)
        group, elem = struct.unpack_from("<HH", self.data, pos)
        if group == 0xFFFE or not explicit:  # item / delimiter, or implicit VR: 4-byte length
            return group, elem, b"", pos + 8, struct.unpack_from("<I", self.data, pos + 4)[0]
        vr = self.data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            self.need(pos + 12)
            return group, elem, vr, pos + 12, struct.unpack_from("<I", self.data, pos + 8)[0]
        return group, elem, vr, pos + 8, struct.unpack_from("<H", self.data, pos + 6)[0]

    def skip_sequence(self, pos: int, explicit: bool) -> int:
        """Past an undefined-length sequence whose first item starts at ``pos``."""
        while True:
            group, elem, _, start, length = self.element(pos, explicit)
            if (group, elem) == (0xFFFE, 0xE0DD):
                return start
            if (group, elem) != (0xFFFE, 0xE000):
                raise _Unsupported
            if length != 0xFFFFFFFF:
                pos = start + length
                continue
            pos = start
            while True:  # an undefined-length item: its elements up to the item delimiter
                group, elem, vr, start, length = self.element(pos, explicit)
                if (group, elem) == (0xFFFE, 0xE00D):
                    pos = start
                    break
                pos = self.skip_value(group, vr, start, length, explicit)

    def skip_value(self, group: int, vr: bytes, start: int, length: int, explicit: bool) -> int:
        if length != 0xFFFFFFFF:
            return start + length
        if group == 0xFFFE or (explicit and vr != b"SQ"):  # UN of undefined length, encapsulated pixels...
            raise _Unsupported
        return self.skip_sequence(start, explicit)


def read_fast_header(path: str | Path) -> FastHeader | None:
    """The kept tags of one DICOM file, or None when it is not the plain case (then use pydicom).

    Raises:
        OSError: the file cannot be opened or read.
    """
    with open(path, "rb") as f:
        r = _Reader(f, os.fstat(f.fileno()).st_size)
        if len(r.data) < 132 or r.data[128:132] != b"DICM":
            return None
        try:
            return _parse(r)
        except (_Unsupported, struct.error):
            return None


_EMPTY_MEANS_DEFAULT = ("NumberOfFrames", "RescaleSlope", "RescaleIntercept")  # the reader's own defaults


def _parse(r: _Reader) -> FastHeader:
    out = FastHeader()
    pos, syntax = 132, None
    while True:  # file meta group: always explicit VR little endian
        group, elem, vr, start, length = r.element(pos, True)
        if group != 0x0002:
            break
        if length == 0xFFFFFFFF:
            raise _Unsupported
        r.need(start + length)
        if elem == 0x0010:
            syntax = _text(r.data[start:start + length]).rstrip(" \x00")
        pos = start + length
    if syntax not in RAW_SYNTAXES:
        raise _Unsupported
    explicit = RAW_SYNTAXES[syntax]
    out.transfer_syntax = syntax
    while pos + 8 <= r.size:  # fewer bytes left: trailing padding, as pydicom ignores it
        group, elem, vr, start, length = r.element(pos, explicit)
        if group == 0xFFFE:  # an item outside a sequence
            raise _Unsupported
        if (group, elem) == _PIXEL_DATA:
            if length == 0xFFFFFFFF or (explicit and vr not in (b"OW", b"OB")):
                raise _Unsupported
            out.pixel_offset, out.pixel_length = start, length
            break
        known = TAGS.get((group, elem))
        if known is None:
            pos = r.skip_value(group, vr, start, length, explicit)
            continue
        keyword, want = known
        if length == 0xFFFFFFFF or (explicit and vr.decode("latin-1") != want):
            raise _Unsupported
        r.need(start + length)
        raw = r.data[start:start + length]
        if raw if want == "US" else raw.strip(b" \x00"):
            out[keyword] = _decode(keyword, want, raw)
        elif keyword not in _EMPTY_MEANS_DEFAULT:  # an empty value: pydicom's None/'' is not worth copying
            raise _Unsupported
        pos = start + length
    if "SeriesInstanceUID" not in out:
        raise _Unsupported
    return out
