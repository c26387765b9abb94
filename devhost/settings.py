"""Settings of a local run: local.settings.json, as `func start` reads it, and the app to load."""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import azure.functions as func

__all__ = ["DEFAULT_APP", "LocalSettings", "apply_values", "load_function_app", "read_local_settings"]

DEFAULT_APP = "function_app:app"


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """The `Values` (app settings) and `Host` (LocalHttpPort, CORS) sections."""

    values: Mapping[str, str] = field(default_factory=dict)
    host: Mapping[str, Any] = field(default_factory=dict)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def read_local_settings(path: Path) -> LocalSettings:
    """Read local.settings.json; a missing file gives empty settings."""
    if not path.is_file():
        return LocalSettings()
    document = json.loads(path.read_text(encoding="utf-8-sig"))
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object")
    values = document.get("Values") or {}
    host = document.get("Host") or {}
    if not isinstance(values, dict) or not isinstance(host, dict):
        raise ValueError(f"{path}: 'Values' and 'Host' must be JSON objects")
    return LocalSettings(
        values={str(name): _as_text(value) for name, value in values.items() if value is not None},
        host=host,
    )


def apply_values(values: Mapping[str, str], environ: MutableMapping[str, str]) -> list[str]:
    """Copy settings into the environment without overriding what is already set.

    Returns the names that were set (never the values: settings hold secrets).
    """
    applied = [name for name in values if name not in environ]
    for name in applied:
        environ[name] = values[name]
    return applied


def load_function_app(reference: str = DEFAULT_APP) -> func.FunctionApp:
    """Import `module:attribute` (attribute defaults to `app`) and check it is a FunctionApp."""
    module_name, _, attribute = reference.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attribute or "app")
    if not isinstance(app, func.FunctionApp):
        raise TypeError(f"{reference} is a {type(app).__name__}, not an azure.functions.FunctionApp")
    return app
