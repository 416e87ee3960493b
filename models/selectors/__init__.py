"""Token-selection methods at the pruning layer, one file each, behind one seam (`base`)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from models.selectors.base import (
    METHODS,
    PREFILL,
    VISION_ENCODER,
    LayerOutputs,
    PrefillSelector,
    SelectionMethod,
    VisionSelector,
    forced_selection,
    kept_states,
    register,
)

DEFAULT_METHOD = "vlm-pruner"
# The modules that define the methods: a new method is one more module here.
METHOD_MODULES = (
    "models.selectors.vlm_pruner",
    "models.selectors.fastv",
    "models.selectors.dart",
    "models.selectors.divprune",
)


def method_names() -> list[str]:
    """Every registered method's name, the default first."""
    _import_methods()
    return sorted(METHODS, key=lambda name: (name != DEFAULT_METHOD, name))


def get_method(name: str, settings: dict[str, Any] | None = None) -> SelectionMethod:
    """The method registered under `name`, with `settings` (a manifest's `pruning.config`) or its defaults.

    Raises:
        ValueError: an unknown name or settings the method does not take.
    """
    _import_methods()
    try:
        method = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown selection method {name!r}; methods: {', '.join(method_names())}") from None
    try:
        return method.from_settings(settings or {})
    except TypeError as error:
        raise ValueError(f"settings {settings} do not fit the {name} method: {error}") from None


def _import_methods() -> None:
    for module in METHOD_MODULES:
        import_module(module)


__all__ = [
    "DEFAULT_METHOD",
    "PREFILL",
    "VISION_ENCODER",
    "LayerOutputs",
    "PrefillSelector",
    "SelectionMethod",
    "VisionSelector",
    "forced_selection",
    "get_method",
    "kept_states",
    "method_names",
    "register",
]
