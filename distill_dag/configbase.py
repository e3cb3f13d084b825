"""What every config dataclass shares: one error type, key checking, building with a config path,
and a stable hash of config values."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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
    """Construct a config dataclass from a mapping; any error is prefixed with its path."""
    check_keys(cls, data, where)
    try:
        return cls(**data)
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
