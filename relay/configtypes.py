"""Typed config loading: TOML tables -> frozen dataclasses, with errors that name the key.

A section is a frozen dataclass whose fields carry defaults. ``build(cls, data, "smtp")`` converts a dict,
rejecting unknown keys and bad values with a ``ConfigError`` naming the full dotted key. Field types
understood: bool, int, float, str, ``Size`` (bytes: 20MB), ``Duration`` (seconds: 5m, 4000s, 5d),
``Optional[X]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses (also in lists and dicts).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Callable, Union


class ConfigError(ValueError):
    """One or more config problems; ``.problems`` lists them, each naming its key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class Size(int):
    """A byte count; accepts 1234, "20MB", "512k", "1.5 GiB"."""


class Duration(float):
    """Seconds; accepts 30, "30s", "5m", "2h", "5d", "1w", "500ms"."""


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_SIZE_MULT = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "ki": 1024, "m": 1000**2, "mb": 1000**2,
              "mib": 1024**2, "mi": 1024**2, "g": 1000**3, "gb": 1000**3, "gib": 1024**3, "gi": 1024**3,
              "t": 1000**4, "tb": 1000**4, "tib": 1024**4, "ti": 1024**4}
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.I)
_DUR_MULT = {"ms": 0.001, "s": 1, "": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        if value < 0:
            raise ValueError
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError
    unit = (m.group(2) or "").lower()
    if unit not in _SIZE_MULT:
        raise ValueError
    return int(float(m.group(1)) * _SIZE_MULT[unit])


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError
        return float(value)
    m = _DUR_RE.match(str(value))
    if not m:
        raise ValueError
    return float(m.group(1)) * _DUR_MULT[(m.group(2) or "").lower()]


def _describe(tp: Any) -> str:
    if tp is Size:
        return 'a size like "20MB"'
    if tp is Duration:
        return 'a duration like "5m"'
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, problems)
    if dataclasses.is_dataclass(tp) or origin in (list, dict):
        return _convert_container(tp, origin, args, value, key, problems)
    try:
        return _convert_scalar(tp, value)
    except ValueError:
        problems.append(f"{key}: expected {_describe(tp)}, got {value!r}")
        return None


def _convert_container(tp: Any, origin: Any, args: tuple[Any, ...], value: Any, key: str,
                       problems: list[str]) -> Any:
    """A nested section (dataclass), a list or a table of values."""
    empty: Any = [] if origin is list else (None if dataclasses.is_dataclass(tp) else {})
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {value!r}")
            return empty
        return [_convert(args[0], v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a table, got {value!r}")
        return empty
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems)
    return {str(k): _convert(args[1], v, f"{key}.{k}", problems) for k, v in value.items()}


# scalar type -> (accepts the TOML value?, conversion); bool is an int in Python, so it is refused explicitly
_SCALARS: dict[Any, tuple[Callable[[Any], bool], Callable[[Any], Any]]] = {
    bool: (lambda v: isinstance(v, bool), lambda v: v),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), lambda v: v),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), float),
    str: (lambda v: isinstance(v, str), lambda v: v),
}


def _convert_scalar(tp: Any, value: Any) -> Any:
    """Raises ValueError when ``value`` is not of (or convertible to) ``tp``."""
    if tp is Size:
        return Size(parse_size(value))
    if tp is Duration:
        return Duration(parse_duration(value))
    check = _SCALARS.get(tp)
    if check is None:
        return value
    accepts, conv = check
    if not accepts(value):
        raise ValueError
    return conv(value)


def _build(cls: Any, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in fields:
            problems.append(f"{key}: unknown key")
            continue
        kwargs[k] = _convert(hints[k], v, key, problems)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    for n in missing:
        problems.append(f"{prefix + '.' if prefix else ''}{n}: required")
    if problems:
        # still try to build for more errors; return None if construction fails
        try:
            return cls(**{k: v for k, v in kwargs.items() if v is not None})
        except Exception:  # noqa: BLE001
            return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{prefix}: {exc}")
        return None


def build(cls: Any, data: dict | None, prefix: str = "") -> Any:
    """Convert ``data`` to ``cls``; raises ConfigError listing every problem."""
    problems: list[str] = []
    obj = _build(cls, data or {}, prefix, problems)
    if problems:
        raise ConfigError(problems)
    return obj


def collect(cls: Any, data: dict | None, prefix: str, problems: list[str]) -> Any:
    """Like build() but appends problems to a shared list (for a whole-file check)."""
    return _build(cls, data or {}, prefix, problems)
