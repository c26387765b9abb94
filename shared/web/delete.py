"""Delete over HTTP (an extension of PS3.18 that the Microsoft DICOM server also offers)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shared.web.common import app_for, guarded, publishing_events, uids


@guarded
async def delete(request: Request) -> Response:
    """DELETE /studies/{study}[/series/{series}[/instances/{instance}]]: files, metadata, index rows."""
    app = app_for(request)
    study, series, instance = uids(request, "study", "series", "instance")
    assert study is not None

    async def delete_and_answer() -> Response:
        await run_in_threadpool(app.service.delete, study, series, instance)
        return Response(status_code=204)

    return await publishing_events(app, delete_and_answer())
