"""Config dataclasses to and from plain values: a field with its help text, a dataclass as a dict of plain values
and back (unknown keys refused, YAML and flag strings coerced to the field's type), merging and setting dotted keys,
reading YAML. Knows no particular config (those are :mod:`layerprobe.core.config` and the modules it names).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import field
from pathlib import Path


def field_help(text: str, **kw):
    """A dataclass field with its help text (what ``--help`` shows)."""
    return field(metadata={"help": text}, **kw)


def typed_dict(obj) -> dict:
    """``asdict`` with float fields as floats (``epochs=3`` and ``epochs=3.0`` are one config)."""
    hints = field_types(type(obj))
    out: dict = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = typed_dict(v)
        elif hints[f.name] is float and isinstance(v, int) and not isinstance(v, bool):
            out[f.name] = float(v)
        else:
            out[f.name] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def field_types(cls) -> dict[str, typing.Any]:
    """Each field's type, the annotations resolved."""
    return typing.get_type_hints(cls)


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys (with the valid ones named)."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping for {where or cls.__name__}, got {type(data).__name__}: {data!r}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown config key {where + unknown[0]!r}; valid keys here: {', '.join(names)}")
    hints = field_types(cls)
    kwargs = {}
    for k, v in data.items():
        t = hints[k]
        kwargs[k] = from_dict(t, v, f"{where}{k}.") if dataclasses.is_dataclass(t) else _coerce(v, t, where + k)
    return cls(**kwargs)


def _coerce(value, t, key: str):
    """Coerce a YAML or flag value to the field type ``t``; strings are parsed (lists comma-separated)."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (item,) = typing.get_args(t)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} expects a list (comma-separated on the command line), got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if t is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} expects true or false, got {value!r}")
    if t in (int, float):
        try:
            out = t(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} expects a number ({t.__name__}), got {value!r}") from None
        if t is int and isinstance(value, float) and value != out:
            raise ValueError(f"{key} expects an integer, got {value!r}")
        return out
    if t is str:
        return str(value)
    raise ValueError(f"{key}: unsupported field type {t}")


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"config file {str(p)!r} not found; pass a YAML file such as experiments/study_a/config.yaml"
        )
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a YAML mapping of config keys, got {type(data).__name__}")
    return data


def set_dotted(data: dict, dotted: str, value) -> None:
    """Set ``data["a"]["b"] = value`` for ``dotted`` = ``"a.b"`` (a copy of ``value``), making the sections that
    are missing; a section that holds a value instead of a mapping is an error that names it."""
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(node.get(p, {}), dict):
            raise ValueError(f"cannot set {dotted!r}: {p!r} is a value ({node[p]!r}), not a section")
        node = node.setdefault(p, {})
    node[leaf] = copy.deepcopy(value)


def deep_merge(base: dict, over: dict, where: str) -> dict:
    """``base`` with ``over``'s values, nested sections merged; a key ``base`` lacks is an error naming it."""
    out = dict(base)
    for k, v in over.items():
        if k not in base:
            raise ValueError(f"unknown config key {where + k!r}; valid keys here: {', '.join(base)}")
        out[k] = deep_merge(base[k], v, f"{where}{k}.") if isinstance(base[k], dict) and isinstance(v, dict) else v
    return out
