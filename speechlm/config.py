"""YAML configs validated against dataclasses: unknown keys and wrong types are errors naming the key."""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from speechlm.registry import suggest

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or mapping does not match what the code expects."""


class SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` / ``5E4`` as floats (YAML 1.2 / JSON), not strings.

    PyYAML follows YAML 1.1, whose float pattern needs a dot, so ``lr: 1e-3`` (how most people
    write a learning rate) would load as the string "1e-3" and fail type checks."""


SafeLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_loads(text: str) -> Any:
    """Parse YAML text with :class:`SafeLoader` (safe; ``1e-3`` is a float)."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - SafeLoader subclass


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file, with errors that name the file and line (``1e-3`` reads as a float)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=SafeLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                return _check_type(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        vt = args[1] if len(args) > 1 else Any
        return {k: _check_type(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys fail with the closest valid key suggested.

    A class may define ``upgrade_keys(data, where) -> data`` (a classmethod) to handle the keys of
    older versions: it raises for a renamed key (naming the new one) or converts it, with a warning."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    upgrade = getattr(cls, "upgrade_keys", None)
    if upgrade is not None:  # old spellings: renamed keys (an error naming the new one), dropped keys
        data = upgrade(dict(data), where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r}{suggest(key, fields)}; valid keys: {', '.join(fields)}"
            )
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict, recursively (for saving)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def load_config(cls: type[T], path: str | os.PathLike, overrides: dict | None = None) -> T:
    """Load YAML at ``path`` into dataclass ``cls``, applying ``overrides`` on top."""
    data = load_yaml(path) or {}
    data.update(overrides or {})
    return from_dict(cls, data, where=str(path))
