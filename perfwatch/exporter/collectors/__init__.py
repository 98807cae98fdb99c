"""Collectors, one per module. Importing this package registers every module's collector."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from perfwatch.exporter.collectors.base import REGISTRY, Collector, HostPaths, register

__all__ = ["REGISTRY", "Collector", "HostPaths", "load_all", "register"]


def load_all() -> dict[str, type[Collector[Any]]]:
    """Import every collector module (each registers itself) and return the registry."""
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")
    return REGISTRY
