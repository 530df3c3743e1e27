"""CSV text in any of the encodings real exports use, with line numbers for error messages."""

from __future__ import annotations

import codecs

import pytest

from ctxray.data.csvfile import decode_csv, read_csv_records

TEXT = "VolumeName,Findings_EN\nvol_1,Kalp boyutu normal. Plevral efüzyon yok.\nvol_2,Not given.\n"


@pytest.mark.parametrize("encode", [lambda t: t.encode("utf-8"), lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
                                    lambda t: t.encode("utf-16"), lambda t: t.encode("utf-16-le")])
def test_encodings_decode_to_the_same_text(tmp_path, encode):
    path = tmp_path / "r.csv"
    path.write_bytes(encode(TEXT))
    assert decode_csv(path) == TEXT


def test_a_latin1_line_is_read_and_records_carry_line_numbers(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(TEXT.replace("vol_2,Not given.", "vol_2,Sağ").encode("utf-8") + "vol_3,café\n".encode("latin-1"))
    columns, rows = read_csv_records(path, required=("VolumeName",))
    assert columns == ["VolumeName", "Findings_EN"]
    assert [(n, r["VolumeName"]) for n, r in rows] == [(2, "vol_1"), (3, "vol_2"), (4, "vol_3")]
    assert rows[2][1]["Findings_EN"] == "café"
    with pytest.raises(ValueError, match=r"r\.csv: missing column\(s\) \['Impressions_EN'\]"):
        read_csv_records(path, required=("Impressions_EN",))
