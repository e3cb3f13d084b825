"""What every config dataclass shares: one error type, one builder (`build_config`, nested
configs included), one way to declare and document a field (`setting`), one definition of what
changes outputs (`Config.fingerprint`), and a stable hash of config values."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

from distill_dag.errors import DistillError

_C = TypeVar("_C")


class ConfigError(DistillError, ValueError):
    """A config value that cannot be used; the message names where it is. Never retryable."""


def check_keys(cls: type, data: Any, where: str) -> None:
    """Reject a non-mapping, or keys a config dataclass does not declare, naming the path."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key(s) {unknown}; known keys: "
                          f"{', '.join(known)}")


def build_config(cls: type[_C], data: Any, where: str) -> _C:
    """Construct a config dataclass from a mapping (nested Config fields and lists of them
    too); any error is prefixed with its config path, e.g. ``teachers[1].sampling: ...``."""
    check_keys(cls, data, where)
    data = _nested(cls, data, where)
    try:
        return cls(**data)
    except ConfigError as exc:
        if str(exc).startswith(where):
            raise
        raise ConfigError(f"{where}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """An integer (not a bool) >= minimum, or a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value: Any, low: float, high: float | None = None) -> None:
    """A number (not a bool) in [low, high], or a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {value!r}")


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of a JSON rendering with sorted keys: the same value hashes the same everywhere."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# -- the one way to declare a config class ------------------------------------------------------

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, doc: str = "", *, factory: Callable[[], Any] | None = None,
            output: bool = True) -> Any:
    """Declare a config field where it is declared: its default, what it means, and whether it
    changes a stage's outputs (`output=False`: speed, placement or logging only; such a field
    stays out of `fingerprint()`, so editing it makes nothing stale and regenerates nothing)."""
    meta = {"doc": doc, "output": output}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Base of every config dataclass: built from a mapping by `from_dict` (nested configs
    included, each error prefixed with its config path), validated in `__post_init__`, and
    fingerprinted by the fields declared with `output=True` (the default)."""

    @classmethod
    def from_dict(cls: type[_C], data: Any, where: str = "") -> _C:
        return build_config(cls, data, where or cls.__name__)

    def output_settings(self) -> dict[str, Any]:
        """The fields that change outputs, nested configs reduced the same way."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.metadata.get("output", True):
                out[f.name] = _output_value(getattr(self, f.name))
        return out

    def fingerprint(self, length: int = 16) -> str:
        """A stable hash of `output_settings()`: equal exactly when outputs would be equal."""
        return stable_hash(self.output_settings(), length)

    @classmethod
    def reference(cls) -> list[tuple[str, str, str, str, bool]]:
        """(name, type, default, doc, changes outputs) of every field, for the docs."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in fields(cls):  # type: ignore[arg-type]
            if f.default is not MISSING:
                default = repr(f.default)
            elif f.default_factory is not MISSING:
                default = repr(f.default_factory())
            else:
                default = "(required)"
            kind = getattr(hints.get(f.name), "__name__", None) or str(hints.get(f.name))
            rows.append((f.name, kind.replace("typing.", ""), default, f.metadata.get("doc", ""),
                         bool(f.metadata.get("output", True))))
        return rows


def _output_value(value: Any) -> Any:
    if isinstance(value, Config):
        return value.output_settings()
    if isinstance(value, list):
        return [_output_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _output_value(v) for k, v in value.items()}
    return value


def _config_type(hint: Any) -> tuple[str, type | None]:
    """('one' | 'list' | 'none', the Config class) for a field's type hint."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, type) and issubclass(hint, Config):
        return "one", hint
    if origin in (types.UnionType, typing.Union) and len(args) == 1:
        return _config_type(args[0])
    if origin is list and args and isinstance(args[0], type) and issubclass(args[0], Config):
        return "list", args[0]
    return "none", None


def _nested(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`data` with nested Config fields (and lists of them) built, each under its own path."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in fields(cls):
        if f.name not in out or out[f.name] is None:
            continue
        how, sub = _config_type(hints.get(f.name))
        if how == "one" and not isinstance(out[f.name], Config):
            out[f.name] = build_config(sub, out[f.name], f"{where}.{f.name}")
        elif how == "list":
            if not isinstance(out[f.name], list):
                raise ConfigError(f"{where}.{f.name}: expected a list, got "
                                  f"{type(out[f.name]).__name__}")
            out[f.name] = [v if isinstance(v, Config) else
                           build_config(sub, v, f"{where}.{f.name}[{i}]")
                           for i, v in enumerate(out[f.name])]
    return out
