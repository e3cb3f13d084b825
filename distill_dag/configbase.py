"""What every config dataclass shares: one error type, one builder (`build_config`, nested
configs included), one way to declare and document a field (`setting`), one definition of what
changes outputs (`Config.fingerprint`), a stable hash of config values, and the field reference
that docs/config.md is generated from (`field_reference`, `config_sections`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from distill_dag.errors import DistillError

_C = TypeVar("_C")


class ConfigError(DistillError, ValueError):
    """A config value that cannot be used; the message names where it is. Never retryable."""


def join_path(where: str, name: str) -> str:
    """The config path of `name` inside `where` ("" is the top level: no leading dot)."""
    return f"{where}.{name}" if where else name


def check_keys(cls: type, data: Any, where: str) -> None:
    """Reject a non-mapping, a renamed key (naming its new name, from the class's
    RENAMED_KEYS) or keys a config dataclass does not declare, naming the path."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in fields(cls)]
    for old, new in getattr(cls, "RENAMED_KEYS", {}).items():
        if old in data and old not in known:
            raise ConfigError(f"{where}: '{old}' was renamed to '{new}'; rename the key in "
                              "the config file")
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
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}" if where else str(exc)) from exc


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """An integer (not a bool) >= minimum, or a ConfigError (a ValueError) naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_number(name: str, value: Any, low: float, high: float | None = None) -> None:
    """A number (not a bool) in [low, high], or a ConfigError (a ValueError) naming the field."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be in {bound}, got {value!r}")


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

    # The config path from_dict names when given none (e.g. "filtering"); "" = the class name.
    WHERE: ClassVar[str] = ""
    # Keys that were renamed, old -> new: an old key fails naming the new one (check_keys).
    RENAMED_KEYS: ClassVar[Mapping[str, str]] = MappingProxyType({})
    # Fields added after stores existed: section hashes (stages' code versions) leave them out
    # while they keep their default, so adding a field makes nothing stale.
    HASHED_WHEN_SET: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls: type[_C], data: Any, where: str = "") -> _C:
        return build_config(cls, data, where or getattr(cls, "WHERE", "") or cls.__name__)

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
        return field_reference(cls)


def field_reference(cls: type) -> list[tuple[str, str, str, str, bool]]:
    """Config.reference() of any config dataclass (one not yet declared with `setting` has
    empty docs, and all its fields count as changing outputs). Defaults are written as in the
    YAML file (null, true, "text", [1, 2]); a nested section's as its repr."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in fields(cls):
        if f.default is not MISSING:
            default = _as_yaml(f.default)
        elif f.default_factory is not MISSING:
            default = _as_yaml(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, type_name(hints.get(f.name)), default, f.metadata.get("doc", ""),
                     bool(f.metadata.get("output", True))))
    return rows


def _as_yaml(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)  # JSON is YAML's flow style
    except TypeError:
        return repr(value)


def type_name(hint: Any) -> str:
    """A type hint as a reader writes it: `list[TeacherConfig] | None`, not module paths."""
    text = hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text).replace("NoneType", "None")


def config_sections(cls: type, where: str = "") -> list[tuple[str, type]]:
    """(config path, class) of `cls` and of every config section nested in it, depth first
    in declaration order: a list of sections appears once, as `name[]`."""
    out = [(where, cls)]
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        how, sub = _config_type(hints.get(f.name))
        if sub is not None:
            path = join_path(where, f.name) + ("[]" if how == "list" else "")
            out += config_sections(sub, path)
    return out


def _output_value(value: Any) -> Any:
    if isinstance(value, Config):
        return value.output_settings()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # A section not yet declared as a Config: every field counts.
        return {f.name: _output_value(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, list):
        return [_output_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _output_value(v) for k, v in value.items()}
    return value


def _is_section(hint: Any) -> bool:
    # A Config, or a config dataclass not yet declared as one (built the same way meanwhile).
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _config_type(hint: Any) -> tuple[str, type | None]:
    """('one' | 'list' | 'none', the config class) for a field's type hint."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if _is_section(hint):
        return "one", hint
    if origin in (types.UnionType, typing.Union) and len(args) == 1:
        return _config_type(args[0])
    if origin is list and args and _is_section(args[0]):
        return "list", args[0]
    return "none", None


def _build(cls: type, data: Any, where: str) -> Any:
    """A nested section: its class's own from_dict when it has one (a Config's, or an override
    that prepares its input), else build_config."""
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return data  # already built
    from_dict = getattr(cls, "from_dict", None)
    return from_dict(data, where) if from_dict is not None else build_config(cls, data, where)


def _nested(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """`data` with nested config fields (and lists of them) built, each under its own path."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in fields(cls):
        if f.name not in out or out[f.name] is None:
            continue
        how, sub = _config_type(hints.get(f.name))
        path = join_path(where, f.name)
        if how == "one":
            out[f.name] = _build(sub, out[f.name], path)
        elif how == "list":
            if not isinstance(out[f.name], list):
                raise ConfigError(f"{path}: expected a list, got {type(out[f.name]).__name__}")
            out[f.name] = [_build(sub, v, f"{path}[{i}]") for i, v in enumerate(out[f.name])]
    return out
