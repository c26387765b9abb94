"""The dev host's ASGI app over small FunctionApps, its settings, and one real `python -m devhost`."""

from __future__ import annotations

import logging
import os
import queue
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import azure.functions as func
import httpx
import pytest
from azurefunctions.extensions.http.fastapi import JSONResponse, Request, Response, StreamingResponse
from starlette.types import ASGIApp

from devhost.server import build_asgi_app
from devhost.settings import apply_values, load_function_app, read_local_settings

REPO_ROOT = Path(__file__).resolve().parents[2]
ORIGIN = "http://viewer.example"


def _make_app() -> tuple[func.FunctionApp, dict[str, int]]:
    """A tiny app: async, sync, streaming, failing and classic HTTP functions plus a blob trigger."""
    threads: dict[str, int] = {}
    bp = func.Blueprint()

    @bp.route(route="studies/{study}/series/{series}", methods=["GET"])
    async def retrieve_series(req: Request) -> Response:
        threads["async"] = threading.get_ident()
        body = f"{req.path_params['study']}|{req.path_params['series']}|{req.query_params.get('q', '')}"
        return Response(body, media_type="text/plain")

    @bp.route(route="studies/{study}", methods=["DELETE"])
    def delete_study(req: Request) -> Response:
        threads["sync"] = threading.get_ident()
        return Response(status_code=204)

    @bp.route(route="stream", methods=["GET"])
    async def stream(req: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            for index in range(3):
                yield f"part{index};".encode()

        return StreamingResponse(parts(), media_type="multipart/related; type=application/dicom")

    @bp.route(route="boom", methods=["GET"])
    async def boom(req: Request) -> Response:
        raise RuntimeError("secret internal detail")

    @bp.route(route="not-a-response", methods=["GET"])
    def not_a_response(req: Request) -> Response:
        return {"status": "this is not a response"}

    @bp.route(route="anything")
    async def anything(req: Request) -> Response:
        return JSONResponse({"method": req.method, "body": (await req.body()).decode()})

    @bp.route(route="classic/{id:int}", methods=["POST"])
    def classic(req: func.HttpRequest) -> func.HttpResponse:
        text = f"{dict(req.route_params)}|{dict(req.params)}|{req.headers.get('x-multi')}|{req.get_body()!r}"
        return func.HttpResponse(text.encode(), status_code=201, mimetype="application/dicom")

    @bp.route(route="classic-text", methods=["GET"])
    def classic_text(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("hello", headers={"Location": "/elsewhere"})

    @bp.blob_trigger(arg_name="blob", path="inbox/{name}", connection="AzureWebJobsStorage")
    def blob_drop(blob: func.InputStream) -> None:  # not HTTP: the server ignores it for now
        raise AssertionError("never called over HTTP")

    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
    app.register_functions(bp)
    return app, threads


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client(asgi: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://testserver")


@pytest.fixture
def threads_and_asgi() -> tuple[dict[str, int], ASGIApp]:
    app, threads = _make_app()
    return threads, build_asgi_app(app, route_prefix="api", cors_origins=[ORIGIN])


@pytest.fixture
async def client(threads_and_asgi: tuple[dict[str, int], ASGIApp]) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(threads_and_asgi[1]) as client:
        yield client


async def test_async_function_gets_decoded_path_params_and_runs_on_the_loop(
    threads_and_asgi: tuple[dict[str, int], ASGIApp], client: httpx.AsyncClient
) -> None:
    response = await client.get("/API/Studies/1.2%2F3/series/4.5?q=x")
    assert response.status_code == 200
    assert response.text == "1.2/3|4.5|x"
    await client.delete("/api/studies/9")
    threads = threads_and_asgi[0]
    assert threads["async"] == threading.get_ident(), "async functions run on the event loop"
    assert threads["sync"] != threading.get_ident(), "sync functions run in the thread pool"


async def test_sync_function_response_is_sent_as_is(client: httpx.AsyncClient) -> None:
    response = await client.delete("/api/studies/9")
    assert response.status_code == 204
    assert response.content == b""


async def test_streaming_response_is_streamed_without_content_length(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/stream")
    assert response.status_code == 200
    assert response.content == b"part0;part1;part2;"
    assert response.headers["content-type"] == "multipart/related; type=application/dicom"
    assert "content-length" not in response.headers


async def test_unhandled_exception_is_a_bare_500_and_the_traceback_is_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="devhost"):
        response = await client.get("/api/boom")
    assert response.status_code == 500
    assert response.content == b""
    failures = [record for record in caplog.records if record.exc_info is not None]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is RuntimeError


async def test_function_returning_a_non_response_is_a_500(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/not-a-response")
    assert response.status_code == 500
    assert response.content == b""


STATUS_CASES = [
    ("POST", "/api/studies/1/series/2", 405, "GET", "wrong-method"),
    ("GET", "/api/studies/1", 405, "DELETE", "only-delete-registered"),
    ("GET", "/api/nothing-here", 404, None, "unknown-route"),
    ("GET", "/studies/1/series/2", 404, None, "outside-route-prefix"),
    ("POST", "/health", 405, "GET, HEAD", "health-is-get-only"),
]


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"), [c[:4] for c in STATUS_CASES], ids=[c[4] for c in STATUS_CASES]
)
async def test_unroutable_requests_get_404_or_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, status: int, allow: str | None
) -> None:
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers.get("allow") == allow
    assert response.content == b""


@pytest.mark.parametrize("method", ["GET", "PATCH", "PUT", "POST"])
async def test_function_without_methods_accepts_every_method(client: httpx.AsyncClient, method: str) -> None:
    response = await client.request(method, "/api/anything", content=b"abc")
    assert response.status_code == 200
    assert response.json()["method"] == method


async def test_classic_http_function_gets_a_buffered_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/classic/42?a=1&a=2&b=",
        content=b"payload",
        headers=[("X-Multi", "one"), ("X-Multi", "two")],
    )
    assert response.status_code == 201
    assert response.text == "{'id': '42'}|{'a': '1,2', 'b': ''}|one, two|b'payload'"
    assert response.headers["content-type"] == "application/dicom", "no charset on application/dicom"
    assert response.headers["content-length"] == str(len(response.content))


async def test_classic_text_response_gets_a_charset_and_keeps_its_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/classic-text")
    assert response.text == "hello"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["location"] == "/elsewhere"


async def test_health_counts_only_http_functions(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "functions": 8, "pid": os.getpid()}


async def test_cors_preflight_is_answered_with_requested_headers(client: httpx.AsyncClient) -> None:
    response = await client.options(
        "/api/studies/1/series/2",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "Authorization, Content-Type, Accept",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert allowed == {"GET", "POST", "PUT", "DELETE", "OPTIONS"}
    assert response.headers["access-control-allow-headers"].lower() == "authorization, content-type, accept"


async def test_cors_exposes_dicomweb_headers_to_allowed_origins_only(client: httpx.AsyncClient) -> None:
    allowed = await client.get("/api/studies/1/series/2", headers={"Origin": ORIGIN})
    exposed = {h.strip().lower() for h in allowed.headers["access-control-expose-headers"].split(",")}
    assert {"content-type", "content-length", "warning", "location"} <= exposed
    other = await client.get("/api/studies/1/series/2", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_cors_wildcard_allows_any_origin() -> None:
    app, _ = _make_app()
    async with _client(build_asgi_app(app, route_prefix="api", cors_origins=["*"])) as client:
        response = await client.get("/health", headers={"Origin": "http://any.example"})
    assert response.headers["access-control-allow-origin"] == "*"


async def test_empty_route_prefix_serves_functions_at_the_root() -> None:
    app, _ = _make_app()
    async with _client(build_asgi_app(app, route_prefix="", cors_origins=[])) as client:
        assert (await client.get("/studies/1/series/2")).text == "1|2|"
        assert (await client.get("/api/studies/1/series/2")).status_code == 404


async def test_one_log_line_per_request_without_query_string_or_uids(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """INFO names the function, never the path (UIDs) nor the query (patient names)."""
    with caplog.at_level(logging.INFO, logger="devhost.server"):
        await client.get("/api/studies/1.2.999/series/2?PatientName=DOE%5EJOHN")
    lines = [r.getMessage() for r in caplog.records if r.name == "devhost.server"]
    assert len(lines) == 1
    assert re.fullmatch(r"GET \w+ 200 \d+\.\dms", lines[0])
    assert "DOE" not in caplog.text
    assert "1.2.999" not in caplog.text


async def test_the_same_app_can_be_served_twice() -> None:
    """get_functions() may run once per app; discovery remembers its answer."""
    app, _ = _make_app()
    build_asgi_app(app, route_prefix="api", cors_origins=[])
    async with _client(build_asgi_app(app, route_prefix="api", cors_origins=[])) as client:
        assert (await client.get("/health")).json()["functions"] == 8


def test_trigger_argument_missing_from_the_signature_is_refused() -> None:
    app = func.FunctionApp()

    @app.route(route="x", trigger_arg_name="request")
    async def wrong(req: Request) -> Response:
        return Response()

    with pytest.raises(ValueError, match="'request'"):
        build_asgi_app(app, route_prefix="api", cors_origins=[])


def test_local_settings_fill_the_environment_without_overriding(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(
        '{"IsEncrypted": false, "Values": {"A": "from-file", "B": "from-file", "N": 3, "T": true},'
        ' "Host": {"LocalHttpPort": 7072}}',
        encoding="utf-8",
    )
    settings = read_local_settings(path)
    environ = {"A": "already-set"}
    applied = apply_values(settings.values, environ)
    assert environ == {"A": "already-set", "B": "from-file", "N": "3", "T": "true"}
    assert applied == ["B", "N", "T"]
    assert settings.host["LocalHttpPort"] == 7072
    assert read_local_settings(tmp_path / "missing.json").values == {}


def test_load_function_app_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match=r"not an azure\.functions\.FunctionApp"):
        load_function_app("os:path")


FIXTURE_APP = textwrap.dedent(
    """
    import azure.functions as func
    from azurefunctions.extensions.http.fastapi import Request, Response

    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="echo/{name}", methods=["GET"])
    async def echo(req: Request) -> Response:
        return Response(req.path_params["name"], media_type="text/plain")
    """
)


@pytest.mark.e2e
def test_python_m_devhost_serves_health_over_real_http(tmp_path: Path) -> None:
    (tmp_path / "devhost_fixture_app.py").write_text(FIXTURE_APP, encoding="utf-8")
    env = {
        **os.environ,
        "DEVHOST_APP": "devhost_fixture_app:app",
        "DEVHOST_HOST": "127.0.0.1",
        "DEVHOST_PORT": "0",  # the OS picks a free port; devhost prints the real one
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)]),
        "PYTHONUNBUFFERED": "1",
    }
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "devhost"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout

    def read_lines() -> None:
        for line in stdout:
            lines.put(line)
        lines.put("")  # end of output: the process exited

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    try:
        try:
            ready = lines.get(timeout=30)
        except queue.Empty:
            ready = ""
        if not ready.startswith("devhost listening on "):
            pytest.fail(f"devhost did not start: {ready!r} {stderr_path.read_text()}")
        found = re.fullmatch(r"devhost listening on (http://127\.0\.0\.1:\d+/)(\S*)\n", ready)
        assert found, ready
        root = found.group(1)
        with httpx.Client(timeout=10) as http:
            health = http.get(f"{root}health")
            echo = http.get(f"{ready.split()[-1].rstrip('/')}/echo/a%20b")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "functions": 1, "pid": process.pid}
        assert echo.text == "a b"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            stdout.close()
            reader.join(timeout=5)
    assert process.returncode is not None
