"""Delete (the Microsoft DICOM server's extension of PS3.18): study, series, instance."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.web import delete

bp = func.Blueprint()
ANON = func.AuthLevel.ANONYMOUS


@bp.route(route="studies/{study}", methods=["DELETE"], auth_level=ANON)
async def delete_study(req: Request) -> Response:
    return await delete.delete(req)


@bp.route(route="studies/{study}/series/{series}", methods=["DELETE"], auth_level=ANON)
async def delete_series(req: Request) -> Response:
    return await delete.delete(req)


@bp.route(route="studies/{study}/series/{series}/instances/{instance}", methods=["DELETE"], auth_level=ANON)
async def delete_instance(req: Request) -> Response:
    return await delete.delete(req)
