"""Named model configurations: the zoo's catalogue.

Every zoo model is a plain ``torch.nn.Module`` built from one config dataclass,
``Model(config)``, and keeps it as ``model.config``. The registry maps a name such as
``jasper-10x5dr`` to a model class and a config; :func:`create` builds one with random
weights, optionally overriding config fields. Model files register their presets at import
time with :func:`register`; the built-in model modules are imported lazily on first use.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo import saved_names
from zoo.config import config_from_dict, replace_fields

#: Modules whose import registers the built-in presets. Add a module here when it defines presets.
BUILTIN_MODULES: tuple[str, ...] = (
    "zoo.speech.jasper",
    "zoo.speech.deepspeech2",
    "zoo.text.bn_lstm",
    "zoo.text.factorized_lstm",
    "zoo.text.lm",
    "zoo.recsys.autoencoder",
)


@dataclass(frozen=True)
class ModelSpec:
    """One named configuration: ``cls(config)`` builds the model."""

    name: str
    cls: type[nn.Module]
    config: Any
    task: str
    description: str

    @property
    def class_path(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


_REGISTRY: dict[str, ModelSpec] = {}
_builtins_loaded = False


def register(name: str, cls: type[nn.Module], config: Any, *, task: str, description: str) -> None:
    """Add a named preset. ``config`` must be a dataclass instance accepted by ``cls``."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"config for {name!r} must be a dataclass instance, got {type(config).__name__}")
    existing = _REGISTRY.get(name)
    if existing is not None and (existing.cls is not cls or existing.config != config):
        raise ValueError(f"model name {name!r} is already registered by {existing.class_path}")
    _REGISTRY[name] = ModelSpec(name, cls, config, task, description)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            # A model file that does not exist yet registers nothing; any other missing module is a bug.
            if error.name != module:
                raise
    _builtins_loaded = True


def get_spec(name: str) -> ModelSpec:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


def list_models(task: str | None = None) -> list[ModelSpec]:
    """All registered presets (optionally of one task), sorted by task then name."""
    _load_builtins()
    specs = [s for s in _REGISTRY.values() if task is None or s.task == task]
    return sorted(specs, key=lambda s: (s.task, s.name))


def import_class(class_path: str) -> type:
    """``"zoo.speech.jasper.Jasper"`` -> the class, with a clear error. Saved names (``"jasper"``) and the
    class paths earlier versions of zoo wrote resolve through :mod:`zoo.saved_names`."""
    return saved_names.resolve(class_path)


def build_config(name_or_class_path: str, overrides: dict[str, Any] | None = None) -> tuple[type[nn.Module], Any]:
    """Resolve a registry name or a dotted class path to ``(cls, config)`` with overrides applied.

    A class path uses the class's ``Config`` attribute (its config dataclass) with defaults.
    Nested dataclass fields can be overridden with a dict.
    """
    overrides = dict(overrides or {})
    if "." in name_or_class_path and name_or_class_path not in _REGISTRY:
        cls = import_class(name_or_class_path)
        config_cls = getattr(cls, "Config", None)
        if config_cls is None:
            raise ValueError(f"{name_or_class_path} has no `Config` dataclass attribute")
        return cls, replace_fields(config_cls(), overrides, name_or_class_path)
    spec = get_spec(name_or_class_path)
    return spec.cls, replace_fields(spec.config, overrides, spec.name)


def create(name: str, **overrides: Any) -> nn.Module:
    """Build a model with random weights from a registry name (or dotted class path)."""
    cls, config = build_config(name, overrides)
    return cls(config)


def count_parameters(name: str, **overrides: Any) -> int:
    """Parameter count of a preset, built on the meta device so nothing is allocated."""
    cls, config = build_config(name, overrides)
    with torch.device("meta"):
        model = cls(config)
    return sum(p.numel() for p in model.parameters())


def network_dict(cls: type[nn.Module], config: Any) -> dict[str, Any]:
    """JSON-able description of a network: ``{"model_type": <saved name>, "config": {...}}``
    (the model type is the class's stable name, :func:`zoo.saved_names.saved_name`)."""
    return {"model_type": saved_names.saved_name(cls), "config": dataclasses.asdict(config)}


def model_to_dict(model: nn.Module) -> dict[str, Any]:
    """JSON-able description of a zoo model (:func:`network_dict` of its class and config)."""
    return network_dict(type(model), model.config)


def model_from_dict(data: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`model_to_dict` (random weights; load a state dict afterwards). Descriptions written
    by earlier versions of zoo name a ``class_path`` instead of a ``model_type``."""
    model_type = data.get("model_type", data.get("class_path"))
    if model_type is None:
        raise ValueError(f"network description without a 'model_type': {sorted(data)}")
    cls = import_class(model_type)
    return cls(config_from_dict(cls.Config, data["config"]))
