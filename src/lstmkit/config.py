"""Dataclass configs <-> TOML files.

Each model keeps its config dataclass next to it; this module only knows how to fill a tree of
dataclasses from a TOML file (or a dict) and write it back, checking every field on the way:
an unknown key, a wrong type or a value out of range raises one :class:`InputError` naming the
file and the field. Ranges come from each field's ``metadata``::

    lr: float = field(default=30.0, metadata={"min": 0.0, "min_open": True})
"""
from __future__ import annotations

import dataclasses
import math
try:
    import tomllib
except ModuleNotFoundError:      # Python 3.10: the same parser from PyPI (a dependency there)
    import tomli as tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")


def _check_value(value: Any, f: dataclasses.Field, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    optional = origin in (typing.Union, getattr(__import__("types"), "UnionType", ())) and type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, f"found {value!r}", "a number")
        value = float(value)
        if not math.isfinite(value):        # TOML has nan and inf literals; no setting means either
            raise InputError(where, f"found {value!r}", "a finite number")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(where, f"found {value!r}", "an integer")
    elif hint is bool:
        if not isinstance(value, bool):
            raise InputError(where, f"found {value!r}", "true or false")
    elif hint is str:
        if not isinstance(value, str):
            raise InputError(where, f"found {value!r}", "a string")
    elif origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"found {value!r}", "a list")
        inner = args[0] if args else Any
        value = [_check_value(v, f, inner, f"{where}[{i}]") if inner is not Any else v
                 for i, v in enumerate(value)]
        value = tuple(value) if origin is tuple else value
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise InputError(where, f"found {value!r}", "one of " + ", ".join(map(repr, meta["choices"])))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("min_open") and value == lo)):
            raise InputError(where, f"found {value!r}", f"a value {'>' if meta.get('min_open') else '>='} {lo}")
        if hi is not None and (value > hi or (meta.get("max_open") and value == hi)):
            raise InputError(where, f"found {value!r}", f"a value {'<' if meta.get('max_open') else '<='} {hi}")
    return value


def from_dict(cls: type[T], data: dict, source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict, checking keys, types and ranges.

    Example:
        >>> from dataclasses import dataclass, field
        >>> @dataclass
        ... class C:
        ...     p: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
        >>> from_dict(C, {"p": 0.1}).p
        0.1
        >>> from_dict(C, {"p": 1.5}, "c.toml")
        Traceback (most recent call last):
        ...
        lstmkit.errors.InputError: c.toml: field 'p': found 1.5; expected a value <= 1.0
    """
    if not isinstance(data, dict):
        raise InputError(source, f"section '{prefix.rstrip('.') or '<top>'}' is {type(data).__name__}", "a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(source, f"unknown key '{prefix}{unknown[0]}'",
                         "one of " + ", ".join(f"'{prefix}{k}'" for k in fields))
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        where = f"{source}: field '{prefix}{name}'"
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, source, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(value, fields[name], hint, where)
    obj = cls(**kwargs)
    # defaults are checked too, so a subclass with a bad default fails loudly
    for f in dataclasses.fields(obj):
        if not dataclasses.is_dataclass(hints[f.name]) and f.name not in kwargs:
            _check_value(getattr(obj, f.name), f, hints[f.name], f"{source}: field '{prefix}{f.name}'")
    problem = obj.cross_check() if hasattr(obj, "cross_check") else None   # rules that join several fields
    if problem:
        name, found, expected = problem
        raise InputError(f"{source}: field '{prefix}{name}'", found, expected)
    return obj


BUILTIN_CONFIGS = Path(__file__).parent / "configs"


def builtin_configs() -> dict[str, str]:
    """Name -> first comment line of every config shipped with the package (``--config NAME``)."""
    out = {}
    for p in sorted(BUILTIN_CONFIGS.glob("*.toml")):
        first = next((ln.lstrip("# ").strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "")
        out[p.stem] = first
    return out


def resolve_config(name: str | Path) -> Path:
    """A config file: ``name`` itself if it exists, else the built-in config of that name (with or
    without ``.toml``; ``configs/NAME.toml`` also finds it from any folder).

    >>> resolve_config("tiny").name
    'tiny.toml'
    """
    p = Path(name)
    if p.is_file():
        return p
    stem = p.name[:-5] if p.name.endswith(".toml") else p.name
    builtin = BUILTIN_CONFIGS / f"{stem}.toml"
    if builtin.is_file() and (p.parent in (Path("."), Path("configs"))):
        return builtin
    raise InputError(str(name), "config not found", "a TOML file, or a built-in name: " + ", ".join(builtin_configs()))


def load_toml(cls: type[T], path: str | Path, overrides: dict | None = None) -> T:
    """Read a TOML file into dataclass ``cls``; ``overrides`` (nested dict) win over the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "config file not found", "an existing TOML file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(str(path), f"not valid TOML ({e})", "a TOML file") from None
    return from_dict(cls, merge(data, overrides or {}), str(path))


def merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def to_dict(obj: Any) -> dict:
    """Dataclass tree -> plain dict (tuples become lists, ``None`` fields are dropped for TOML)."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = to_dict(v)
        elif v is not None:
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def dumps_toml(data: dict) -> str:
    """Write a dict of scalars, lists and tables as TOML (enough for our configs)."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return str(v)

    lines: list[str] = []

    def emit(d: dict, prefix: str) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        tables = {k: v for k, v in d.items() if isinstance(v, dict)}
        if prefix and scalars:
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {fmt(v)}")
        if scalars:
            lines.append("")
        for k, v in tables.items():
            emit(v, f"{prefix}.{k}" if prefix else k)

    emit(data, "")
    return "\n".join(lines)


def parse_override(text: str) -> dict:
    """``"optim.lr=10"`` -> ``{"optim": {"lr": 10}}`` (value parsed as TOML, else a string)."""
    if "=" not in text:
        raise InputError("--set", f"found {text!r}", "KEY=VALUE, e.g. optim.lr=10")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out
