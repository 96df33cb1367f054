"""The method registry: names to classes, validated options, and plugins.

The built-in methods are listed in :data:`BUILTIN` by module and imported on first use, so no
other installed package (say one named ``baselines``) can hide them, and nothing here imports
a method module at import time (no import cycle between the registry and the methods).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
import warnings
from importlib.metadata import entry_points
from typing import Any, Sequence

from acdc_bench.methods.base import MaskedConfig, MaskedMethod, MethodConfig, SparsityMethod

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


def _origin(cls: type) -> tuple[str, str]:
    """Where a class is defined: its qualified name and source file (one file imported under two
    module names, as ``baselines.rigl`` and ``acdc_bench.baselines.rigl``, is one origin)."""
    try:
        where = os.path.realpath(inspect.getfile(cls))
    except (TypeError, OSError):  # defined in ``python -c`` or an interactive session
        where = cls.__module__
    return cls.__qualname__, where


def _class_variable(annotation) -> bool:
    """A ``ClassVar`` annotation (a string one under ``from __future__ import annotations``): no option."""
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.replace("typing.", "").startswith("ClassVar")


def register_method(name: str):
    """Class decorator: make a :class:`SparsityMethod` available under ``name`` in configs."""

    def decorator(cls: type[SparsityMethod]) -> type[SparsityMethod]:
        if not (isinstance(cls, type) and issubclass(cls, SparsityMethod)):
            raise TypeError(f"@register_method('{name}') needs a SparsityMethod subclass, got {cls!r}")
        config = cls.Config
        if not (isinstance(config, type) and issubclass(config, MethodConfig)
                and dataclasses.is_dataclass(config)):
            raise TypeError(f"@register_method('{name}'): {cls.__name__}.Config must be a dataclass subclassing "
                            f"acdc_bench.methods.MethodConfig (or MaskedConfig), got {config!r}")
        fields = {field.name for field in dataclasses.fields(config)}
        undeclared = sorted(key for key, kind in inspect.get_annotations(config).items()
                            if key not in fields and not _class_variable(kind))
        if undeclared:
            raise TypeError(f"@register_method('{name}'): {config.__qualname__} declares {undeclared} but is not "
                            f"decorated with @dataclasses.dataclass, so they are no options: decorate it")
        if issubclass(cls, MaskedMethod) and not issubclass(config, MaskedConfig):
            raise TypeError(f"@register_method('{name}'): {cls.__name__} is a MaskedMethod, so its Config must "
                            f"subclass acdc_bench.methods.MaskedConfig (distribution, keep_dense, include, "
                            f"exclude, pattern), not {config.__qualname__}")
        existing = _REGISTRY.get(name)
        if existing is not None and _origin(existing) != _origin(cls):
            raise ValueError(f"method name '{name}' is already registered by {existing.__module__}."
                             f"{existing.__qualname__}; choose another name for {cls.__module__}.{cls.__qualname__}")
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
        fresh, before = module not in sys.modules, set(_REGISTRY.items())
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"plugin module '{module}' could not be imported: {error}") from error
        if fresh and set(_REGISTRY.items()) == before:
            warnings.warn(f"plugin module '{module}' registered no method: decorate its class with "
                          f"@acdc_bench.methods.register_method('name')", stacklevel=2)


def method_names() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[SparsityMethod]:
    load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; allowed: {', '.join(sorted(_REGISTRY))} (a method of your own "
                         f"registers when its module is imported: --plugin MODULE, a suite's plugins: list, or "
                         f"import it before sparsify)")
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
    for key in ("include", "exclude", "keep_dense"):
        names = getattr(config, key, None)
        if names is not None and not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{where}{key} must be a list of layer names or patterns (e.g. ['fc1', 'layer4.*']), "
                             f"got {names!r}")
    config.validate()
    return config


