"""QIDO-RS over HTTP."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.core.attributes import Level
from shared.core.query import parse_query
from shared.web.common import JSON_OFFERS, app_for, base_url, guarded, json_response, negotiate_request, uids


async def _search(request: Request, level: Level) -> Response:
    app = app_for(request)
    study, series = uids(request, "study", "series")
    chosen = negotiate_request(request, JSON_OFFERS)
    query = parse_query(
        level,
        list(request.query_params.multi_items()),
        study_uid=study,
        series_uid=series,
        default_limit=app.settings.qido_default_limit,
        max_limit=app.settings.qido_max_limit,
    )
    results = await run_in_threadpool(app.service.search, query, base_url(request, app))
    return json_response(results, 200, query.warnings(), media_type=chosen.offer.media_type)


@guarded
async def search_for_studies(request: Request) -> Response:
    """QIDO-RS: GET /studies."""
    return await _search(request, Level.STUDY)


@guarded
async def search_for_series(request: Request) -> Response:
    """QIDO-RS: GET /series and /studies/{study}/series."""
    return await _search(request, Level.SERIES)


@guarded
async def search_for_instances(request: Request) -> Response:
    """QIDO-RS: GET /instances, /studies/{study}/instances, /studies/{study}/series/{series}/instances."""
    return await _search(request, Level.INSTANCE)
