"""The change feed (the Microsoft DICOM server's extension): every create, replace and delete."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.web import changefeed

bp = func.Blueprint()
ANON = func.AuthLevel.ANONYMOUS


@bp.route(route="changefeed", methods=["GET"], auth_level=ANON)
async def read_changes(req: Request) -> Response:
    return await changefeed.read_changes(req)


@bp.route(route="changefeed/latest", methods=["GET"], auth_level=ANON)
async def latest_change(req: Request) -> Response:
    return await changefeed.latest_change(req)
