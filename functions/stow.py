"""STOW-RS (PS3.18 10.5): store instances."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.web import stow

bp = func.Blueprint()


@bp.route(route="studies", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def store_instances(req: Request) -> Response:
    return await stow.store_instances(req)


@bp.route(route="studies/{study}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def store_study_instances(req: Request) -> Response:
    return await stow.store_instances(req)
