"""WADO-RS (PS3.18 10.4): instances, frames, metadata, bulk data, rendered."""

from __future__ import annotations

import azure.functions as func
from azurefunctions.extensions.http.fastapi import Request, Response

from shared.web import wado

bp = func.Blueprint()
ANON = func.AuthLevel.ANONYMOUS
INSTANCE = "studies/{study}/series/{series}/instances/{instance}"


@bp.route(route="studies/{study}", methods=["GET"], auth_level=ANON)
async def retrieve_study(req: Request) -> Response:
    return await wado.retrieve(req)


@bp.route(route="studies/{study}/series/{series}", methods=["GET"], auth_level=ANON)
async def retrieve_series(req: Request) -> Response:
    return await wado.retrieve(req)


@bp.route(route=INSTANCE, methods=["GET"], auth_level=ANON)
async def retrieve_instance(req: Request) -> Response:
    return await wado.retrieve(req)


@bp.route(route=INSTANCE + "/frames/{frames}", methods=["GET"], auth_level=ANON)
async def retrieve_instance_frames(req: Request) -> Response:
    return await wado.retrieve_frames(req)


@bp.route(route="studies/{study}/metadata", methods=["GET"], auth_level=ANON)
async def retrieve_study_metadata(req: Request) -> Response:
    return await wado.retrieve_metadata(req)


@bp.route(route="studies/{study}/series/{series}/metadata", methods=["GET"], auth_level=ANON)
async def retrieve_series_metadata(req: Request) -> Response:
    return await wado.retrieve_metadata(req)


@bp.route(route=INSTANCE + "/metadata", methods=["GET"], auth_level=ANON)
async def retrieve_instance_metadata(req: Request) -> Response:
    return await wado.retrieve_metadata(req)


@bp.route(route=INSTANCE + "/bulk/{*path}", methods=["GET"], auth_level=ANON)
async def retrieve_bulkdata(req: Request) -> Response:
    return await wado.retrieve_bulkdata(req)


@bp.route(route=INSTANCE + "/rendered", methods=["GET"], auth_level=ANON)
async def retrieve_rendered_instance(req: Request) -> Response:
    return await wado.retrieve_rendered(req)


@bp.route(route=INSTANCE + "/frames/{frame}/rendered", methods=["GET"], auth_level=ANON)
async def retrieve_rendered_frame(req: Request) -> Response:
    return await wado.retrieve_rendered(req)
