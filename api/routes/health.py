"""``GET /health``: ready only when the database, Temporal and every queue's worker are.

Never refused by admission (api/admission.py), and answered at once from checks made in the
background (api/healthwatch.py), so it answers while the API is saturated and when a part
never does."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/health", include_in_schema=False)
async def health(state: StateDep) -> JSONResponse:
    status, body = await state.health_watch.report()
    return JSONResponse(body, status_code=status)
