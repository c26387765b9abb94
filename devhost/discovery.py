"""Enumerate the functions of a FunctionApp once and describe them as plain values.

`FunctionApp.get_functions()` may be called only once per app (a second call fails its
unique-name check), so `discover` remembers its answer per app object: the HTTP server and
the event dispatchers added later (blob, Service Bus) all read the same list.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

__all__ = [
    "BLOB_TRIGGER",
    "HTTP_TRIGGER",
    "SERVICE_BUS_TRIGGER",
    "TIMER_TRIGGER",
    "FunctionSpec",
    "discover",
    "functions_of",
    "http_functions",
]

HTTP_TRIGGER = "httpTrigger"
BLOB_TRIGGER = "blobTrigger"
SERVICE_BUS_TRIGGER = "serviceBusTrigger"
TIMER_TRIGGER = "timerTrigger"

_lock = threading.Lock()
_discovered: weakref.WeakKeyDictionary[func.FunctionApp, tuple[FunctionSpec, ...]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One registered function: its name, trigger binding and the user's callable."""

    name: str
    trigger_type: str
    arg_name: str
    trigger: Mapping[str, Any] = field(repr=False)
    user_function: Callable[..., Any] = field(repr=False)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    @property
    def route(self) -> str:
        """The HTTP route template (the decorator defaults it to the function name)."""
        route = self.trigger.get("route")
        return str(route) if route is not None else self.name

    @property
    def methods(self) -> frozenset[str] | None:
        """Upper-case HTTP methods, or None when the function accepts every method."""
        methods = self.trigger.get("methods")
        if not methods:
            return None
        return frozenset(str(getattr(method, "value", method)).upper() for method in methods)


def _spec(function: Any) -> FunctionSpec:
    trigger = dict(function.get_trigger().get_dict_repr())
    user_function = function.get_user_function()
    spec = FunctionSpec(
        name=function.get_function_name(),
        trigger_type=str(trigger.get("type", "")),
        arg_name=str(trigger.get("name", "")),
        trigger=trigger,
        user_function=user_function,
    )
    parameters = inspect.signature(user_function).parameters
    if spec.arg_name not in parameters and not any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    ):
        # The Functions worker refuses to index such a function too.
        raise ValueError(
            f"function {spec.name!r}: its trigger argument {spec.arg_name!r} is not a parameter "
            f"of {user_function.__qualname__}"
        )
    return spec


def discover(app: func.FunctionApp) -> tuple[FunctionSpec, ...]:
    """Every function of the app, in registration order (calls `get_functions()` once)."""
    with _lock:
        known = _discovered.get(app)
        if known is None:
            known = tuple(_spec(function) for function in app.get_functions())
            _discovered[app] = known
        return known


def functions_of(specs: tuple[FunctionSpec, ...], trigger_type: str) -> tuple[FunctionSpec, ...]:
    """The functions with this trigger type, in registration order."""
    return tuple(spec for spec in specs if spec.trigger_type == trigger_type)


def http_functions(specs: tuple[FunctionSpec, ...]) -> tuple[FunctionSpec, ...]:
    return functions_of(specs, HTTP_TRIGGER)
