from dataclasses import dataclass, field
from typing import Literal

import pytest

from ctxray.config import from_dict, load_config, save_config, to_dict


@dataclass
class Inner:
    width: int = 8
    kind: Literal["vit", "cnn"] = "vit"


@dataclass
class Outer:
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    flag: bool = False


def test_roundtrip_and_overrides(tmp_path):
    cfg = load_config(Outer, None, ["inner.width=16", "lr=0.5", "flag=true", "tags=[a, b]"])
    assert cfg.inner.width == 16 and cfg.lr == 0.5 and cfg.flag is True and cfg.tags == ["a", "b"]
    save_config(cfg, tmp_path / "c.json")
    again = load_config(Outer, tmp_path / "c.json")
    assert again == cfg
    assert to_dict(again)["inner"] == {"width": 16, "kind": "vit"}


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="inner.kind"):
        from_dict(Outer, {"inner": {"kind": "transformer"}})
    with pytest.raises(ValueError, match="unknown setting"):
        from_dict(Outer, {"lrr": 1})
    with pytest.raises(ValueError, match="Outer.lr"):
        from_dict(Outer, {"lr": "fast"})
