"""Upload URLs for blob drop: a short-lived, write-only SAS URL for a new inbox blob."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.web import uploads

bp = func.Blueprint()


@bp.route(route="inbox/uploads", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def create_upload(req: Request) -> Response:
    return await uploads.create_upload(req)
