"""The whole config file: relay sections (relay/config.py) plus the sections other packages register.

A package that owns top-level tables exposes ``SECTIONS = {"table": DataclassType, ...}`` in its config
module (``poller.config``, ``admin_api.config``); list-valued tables (``[[channels]]``) use
``list[DataclassType]``. Unknown top-level tables are errors, like unknown keys.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from relay.config import RelayConfig
from relay.configtypes import ConfigError, _convert, collect


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"            # debug | info | warning | error
    format: str = "text"           # text | json

    def __post_init__(self):
        if self.level.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"log.level: expected debug|info|warning|error, got {self.level!r}")
        if self.format not in ("text", "json"):
            raise ValueError(f"log.format: expected text|json, got {self.format!r}")


@dataclass
class Settings:
    path: str | None
    relay: RelayConfig
    log: LogConfig = field(default_factory=LogConfig)
    extra: dict[str, Any] = field(default_factory=dict)   # sections of poller/admin_api by table name

    def section(self, name: str, default: Any = None) -> Any:
        return self.extra.get(name, default)


def registered_sections() -> dict[str, Any]:
    out: dict[str, Any] = {"log": LogConfig}
    for modname in ("poller.config", "admin_api.config", "relaybox.cluster", "relaybox.workers"):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        out.update(getattr(mod, "SECTIONS", {}))
    return out


def default_path() -> str:
    return os.environ.get("RELAYBOX_CONFIG") or "conf/relaybox.toml"


def parse(data: dict, path: str | None = None) -> Settings:
    problems: list[str] = []
    relay_names = {f.name for f in dataclasses.fields(RelayConfig)}
    sections = registered_sections()
    for key in data:
        if key not in relay_names and key not in sections:
            problems.append(f"{key}: unknown section")
    relay = collect(RelayConfig, {k: v for k, v in data.items() if k in relay_names}, "", problems)
    extra: dict[str, Any] = {}
    for name, tp in sections.items():
        value = data.get(name)
        if value is None:
            origin = typing.get_origin(tp)
            section = isinstance(tp, type) and dataclasses.is_dataclass(tp)
            extra[name] = [] if origin is list else (tp() if section else None)
        else:
            extra[name] = _convert(tp, value, name, problems)
    if problems:
        raise ConfigError(problems)
    log = extra.pop("log")
    return Settings(path=path, relay=relay, log=log, extra=extra)


def load(path: str | None = None) -> Settings:
    path = path or default_path()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    settings = parse(data, path)
    return _resolve_paths(settings)


def _resolve_paths(settings: Settings) -> Settings:
    """Relative storage paths are relative to the working directory (documented); nothing to do now."""
    return settings
