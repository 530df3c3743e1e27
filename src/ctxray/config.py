"""Dataclass configs: load from JSON/YAML, apply ``a.b=c`` overrides, and store as JSON.

Each stage defines its own config dataclass beside its code (``ctxray.train.config.TrainConfig``...);
this module holds the machinery they share so every config reads, overrides and serialises alike.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from ctxray.utils.io import atomic_write_text

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a (nested) dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except (ValueError, TypeError) as err:
                errors.append(str(err))
        raise ValueError(f"{where}: {value!r} matches none of {args}: {errors}")
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        return dict(value)
    if tp is bool:
        if isinstance(value, str):
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{where}: cannot read {value!r} as a boolean")
        return bool(value)
    if tp in (int, float, str):
        try:
            return tp(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: cannot read {value!r} as {tp.__name__}") from err
    if isinstance(tp, type) and issubclass(tp, __import__("enum").Enum):
        return tp(value)
    return value


def from_dict(cls: type[T], data: dict, where: str | None = None) -> T:
    """Build dataclass ``cls`` from a dict, checking names and types.

    Raises:
        ValueError: on an unknown key or a value of the wrong type (the message names the key).
    """
    where = where or cls.__name__
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides to a nested dict (values parsed as YAML scalars)."""
    import yaml

    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a config of type ``cls`` from a JSON/YAML file (or defaults) plus overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as err:
            raise ValueError(f"{p}: cannot read config: {err}") from err
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    base = to_dict(cls()) if not data else data
    merged = apply_overrides(base, overrides or [])
    return from_dict(cls, merged, str(path) if path else cls.__name__)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(to_dict(cfg), indent=2, sort_keys=True))
