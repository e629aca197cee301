"""Version builds: follow a push's build from any API process, also after a restart."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from api import push
from api.deps import CurrentAccount, DatabaseDep, StateDep
from api.errors import not_found
from replicant import builds, responses
from replicant.timeutil import isoformat

router = APIRouter(prefix="/v1", tags=["builds"])


@router.get(
    "/builds/{build_id}",
    response_model=responses.Build,
    responses={200: {"content": {push.NDJSON: {}}}},
)
async def get_build(
    build_id: str, request: Request, state: StateDep, db: DatabaseDep, account: CurrentAccount
) -> Response:
    """A build of the caller's push: status, log and outcome. With ``Accept:
    application/x-ndjson`` the build streams as the push did (log lines from the start, then
    the ``version`` or the ``error``)."""
    row = await asyncio.to_thread(builds.get_build, state.engine, build_id)
    if row is None or row.owner != account.username:
        raise not_found(f"Build {build_id}")
    if push.NDJSON in request.headers.get("accept", ""):
        return StreamingResponse(push.ndjson_events(state, build_id), media_type=push.NDJSON)
    body: dict[str, Any] = {
        "id": row.id,
        "model": row.model,
        "status": row.status,
        "logs": row.logs,
        "version": None,
        "error": None,
        "created_at": isoformat(row.created_at),
        "started_at": isoformat(row.started_at),
        "completed_at": isoformat(row.completed_at),
    }
    if row.status in builds.TERMINAL:
        status, result = await db.read(push.outcome, row)
        body["version" if status < 400 else "error"] = result
    return JSONResponse(body)
