"""QIDO-RS (PS3.18 10.6): search for studies, series and instances."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.web import qido

bp = func.Blueprint()
ANON = func.AuthLevel.ANONYMOUS


@bp.route(route="studies", methods=["GET"], auth_level=ANON)
async def search_for_studies(req: Request) -> Response:
    return await qido.search_for_studies(req)


@bp.route(route="series", methods=["GET"], auth_level=ANON)
async def search_for_series(req: Request) -> Response:
    return await qido.search_for_series(req)


@bp.route(route="studies/{study}/series", methods=["GET"], auth_level=ANON)
async def search_for_study_series(req: Request) -> Response:
    return await qido.search_for_series(req)


@bp.route(route="instances", methods=["GET"], auth_level=ANON)
async def search_for_instances(req: Request) -> Response:
    return await qido.search_for_instances(req)


@bp.route(route="studies/{study}/instances", methods=["GET"], auth_level=ANON)
async def search_for_study_instances(req: Request) -> Response:
    return await qido.search_for_instances(req)


@bp.route(route="studies/{study}/series/{series}/instances", methods=["GET"], auth_level=ANON)
async def search_for_series_instances(req: Request) -> Response:
    return await qido.search_for_instances(req)
