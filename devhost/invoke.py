"""Call one HTTP-triggered user function the way the Python worker does.

HTTP streams functions (the default) get a Starlette `Request` whose `path_params` are the route
values and return a Starlette `Response`, which is sent as is (a `StreamingResponse` streams).
Functions whose trigger argument is annotated `func.HttpRequest` are the classic, buffered model:
the body is read whole, a `func.HttpRequest` is built, and the `func.HttpResponse` (or str) they
return is turned into a Starlette response the way the worker encodes it.
Async functions run on the event loop, sync functions in the thread pool.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from devhost.discovery import FunctionSpec

__all__ = ["call_function", "call_http_function", "is_classic"]


def is_classic(spec: FunctionSpec) -> bool:
    """True when the trigger argument is annotated as `func.HttpRequest` (buffered model)."""
    function = spec.user_function
    try:
        annotation: Any = typing.get_type_hints(function).get(spec.arg_name)
    except Exception:  # unresolvable string annotations: fall back to their text
        parameter = inspect.signature(function).parameters.get(spec.arg_name)
        annotation = None if parameter is None else parameter.annotation
    if isinstance(annotation, str):
        return annotation.rsplit(".", 1)[-1] == "HttpRequest"
    return isinstance(annotation, type) and issubclass(annotation, func.HttpRequest)


async def call_function(spec: FunctionSpec, argument: Any) -> Any:
    """Call the user function with its trigger argument: on the loop when async, else in a thread."""
    kwargs = {spec.arg_name: argument}
    if spec.is_async:
        return await spec.user_function(**kwargs)
    return await run_in_threadpool(spec.user_function, **kwargs)


async def call_http_function(
    spec: FunctionSpec, scope: Scope, receive: Receive, path_params: Mapping[str, str], *, classic: bool
) -> Response:
    """Run the function for this request and return the response to send."""
    http_scope = dict(scope)
    http_scope["path_params"] = dict(path_params)  # before the Request is built, which copies nothing
    request = Request(http_scope, receive)
    if classic:
        return _from_classic(await call_function(spec, await _to_classic(request, path_params)))
    result = await call_function(spec, request)
    if not isinstance(result, Response):
        raise TypeError(f"function {spec.name!r} returned {type(result).__name__}, not a Starlette Response")
    return result


async def _to_classic(request: Request, path_params: Mapping[str, str]) -> func.HttpRequest:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    params: dict[str, str] = {}
    for key, value in parse_qsl(request.url.query, keep_blank_values=True):
        params[key] = f"{params[key]},{value}" if key in params else value
    return func.HttpRequest(
        method=request.method,
        url=str(request.url),
        headers=headers,
        params=params,
        route_params=dict(path_params),
        body=await request.body(),
    )


def _from_classic(result: Any) -> Response:
    if isinstance(result, str):
        return Response(result.encode("utf-8"), headers={"content-type": "text/plain; charset=utf-8"})
    if not isinstance(result, func.HttpResponse):
        raise TypeError(f"a classic HTTP function returned {type(result).__name__}, not func.HttpResponse")
    response = Response(result.get_body() or b"", status_code=result.status_code)
    raw_headers = [
        (name.lower().encode("latin-1"), str(value).encode("latin-1"))
        for name, value in result.headers.items()
        if name.lower() != "content-length"
    ]
    if not any(name == b"content-type" for name, _ in raw_headers):
        # The worker builds Content-Type from mimetype; only text/* gets a charset.
        mimetype = result.mimetype
        content_type = f"{mimetype}; charset={result.charset}" if mimetype.startswith("text/") else mimetype
        raw_headers.append((b"content-type", content_type.encode("latin-1")))
    response.raw_headers = [*response.raw_headers, *raw_headers]  # Starlette set Content-Length
    return response
