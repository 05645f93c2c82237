"""Config dataclasses from what YAML, JSON and Python callers hand over, in one place.

Recipes and saved folders give a config as a mapping of its fields (nested dataclasses as nested mappings,
tuples as lists); Python callers give an instance. Unknown fields are an error naming them and the valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

C = TypeVar("C")


def replace_fields(config: C, overrides: Mapping[str, Any], owner: str) -> C:
    """``config`` with ``overrides`` applied: nested dataclass fields from mappings, tuple fields from lists."""
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"{owner}: unknown config field(s) {unknown}; valid fields: {sorted(fields)}")
    values = {}
    for key, value in overrides.items():
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = replace_fields(current, value, f"{owner}.{key}")
        elif isinstance(current, tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        values[key] = value
    return dataclasses.replace(config, **values)


def config_from_dict(config_cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a (possibly nested) config dataclass from :func:`dataclasses.asdict` output or YAML."""
    return replace_fields(config_cls(), data, config_cls.__name__)


def as_config(value: C | Mapping[str, Any] | None, config_cls: type[C]) -> C | None:
    """An instance of ``config_cls`` from an instance, a mapping of its fields, or ``None`` (kept ``None``)."""
    if value is None or isinstance(value, config_cls):
        return value
    if isinstance(value, Mapping):
        return config_from_dict(config_cls, value)
    raise TypeError(f"expected {config_cls.__name__} or a mapping of its fields, got {type(value).__name__}")
