"""The method registry: names to classes, validated options, and plugins.

The built-in methods are listed in :data:`BUILTIN` by module and imported on first use, so no
other installed package (say one named ``baselines``) can hide them, and nothing here imports
a method module at import time (no import cycle between the registry and the methods).
"""

from __future__ import annotations

import dataclasses
import importlib
from importlib.metadata import entry_points
from typing import Any, Sequence

from acdc_bench.methods.base import MethodConfig, SparsityMethod

#: The shipped methods and the module that registers each.
BUILTIN = {
    "dense": "acdc_bench.methods.dense",
    "acdc": "acdc_bench.methods.acdc",
    "gmp": "acdc_bench.baselines.gmp",
    "rigl": "acdc_bench.baselines.rigl",
    "str": "acdc_bench.baselines.str",
    "set": "acdc_bench.baselines.set",
}

_REGISTRY: dict[str, type[SparsityMethod]] = {}
_ENTRY_POINTS_LOADED = False


def register_method(name: str):
    """Class decorator: make a :class:`SparsityMethod` available under ``name`` in configs."""

    def decorator(cls: type[SparsityMethod]) -> type[SparsityMethod]:
        if not (isinstance(cls, type) and issubclass(cls, SparsityMethod)):
            raise TypeError(f"@register_method('{name}') needs a SparsityMethod subclass, got {cls!r}")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, MethodConfig)
                and dataclasses.is_dataclass(cls.Config)):
            raise TypeError(f"@register_method('{name}'): {cls.__name__}.Config must be a dataclass subclassing "
                            f"acdc_bench.methods.MethodConfig (or MaskedConfig), got {cls.Config!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name '{name}' is already registered by {existing.__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def load_plugins(modules: Sequence[str] = ()) -> None:
    """Import the built-in baselines, entry-point plugins and ``modules`` so they register."""
    global _ENTRY_POINTS_LOADED
    for module in BUILTIN.values():
        importlib.import_module(module)
    if not _ENTRY_POINTS_LOADED:
        for entry in entry_points(group="acdc_bench.methods"):
            entry.load()
        _ENTRY_POINTS_LOADED = True
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"plugin module '{module}' could not be imported: {error}") from error


def method_names() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[SparsityMethod]:
    load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; allowed: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def find_method(name: str) -> type[SparsityMethod] | None:
    """The class registered as ``name``, or None (say a published method this project does not run)."""
    load_plugins()
    return _REGISTRY.get(str(name))


def make_config(method_cls: type[SparsityMethod], values: dict | None, where: str = "") -> Any:
    """Build ``method_cls.Config`` from a dict; unknown keys are an error naming the allowed ones."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(method_cls.Config)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"{where}unknown key(s) {unknown} for method '{method_cls.name}'; "
            f"allowed: {', '.join(sorted(fields)) or '(none)'}"
        )
    config = method_cls.Config(**values)
    config.validate()
    return config


