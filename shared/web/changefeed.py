"""The change feed over HTTP: GET /changefeed and GET /changefeed/latest."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.core.changefeed import parse_changefeed_query
from shared.core.errors import BadRequest
from shared.core.media import Offer
from shared.web.common import app_for, base_url, guarded, json_response, negotiate_request

_JSON = (Offer("application/json"), Offer("application/dicom+json"))


@guarded
async def read_changes(request: Request) -> Response:
    """GET /changefeed?offset=&limit=&includeMetadata=&startTime=&endTime="""
    app = app_for(request)
    negotiate_request(request, _JSON)
    params = dict(request.query_params)
    if len(params) != len(request.query_params.multi_items()):
        raise BadRequest("a change feed parameter is given twice")
    query = parse_changefeed_query(params)
    entries = await run_in_threadpool(app.service.changes, query, base_url(request, app))
    return json_response(entries, media_type="application/json")


@guarded
async def latest_change(request: Request) -> Response:
    """GET /changefeed/latest?includeMetadata="""
    app = app_for(request)
    negotiate_request(request, _JSON)
    include = request.query_params.get("includeMetadata", "true").lower()
    if include not in ("true", "false"):
        raise BadRequest("includeMetadata must be true or false")
    entry = await run_in_threadpool(app.service.latest_change, base_url(request, app), include == "true")
    return json_response(entry, media_type="application/json")
