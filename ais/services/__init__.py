"""Executive services: the plug-in interface (``base``) and the built-in services.

``load_builtin_services()`` imports the service modules so that their
``@register_service`` decorators run; the host then calls ``create_service``.
"""
from __future__ import annotations

import importlib

from ais.services.base import create_service, register_service, registered_services

#: modules of the built-in services, in start-up order (a missing one is skipped)
BUILTIN_MODULES: tuple[str, ...] = ("clm", "ckpt", "amf", "evs", "status")


def load_builtin_services() -> list[str]:
    """Import every built-in service module that exists; return the names loaded."""
    loaded = []
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(f"ais.services.{mod}")
        except ModuleNotFoundError as exc:
            # Only "this service is not written yet" is tolerated, not a broken import inside it.
            if exc.name != f"ais.services.{mod}":
                raise
            continue
        loaded.append(mod)
    return loaded


__all__ = ["create_service", "load_builtin_services", "register_service", "registered_services"]
