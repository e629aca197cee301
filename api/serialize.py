"""Response objects for the current request, and rendering them without FastAPI's second pass.

Rows become response objects in ``replicant.serialize``; this module adds what depends on the
request (``Cancel-After`` clients see ``aborted`` as ``canceled``) and renders an object
once, straight to JSON bytes, for routes that set a status or headers of their own.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.responses import Response
from pydantic import BaseModel

from api.deadlines import shows_aborted
from replicant import responses, serialize
from replicant.tables import Prediction


def prediction_object(row: Prediction, base_url: str, *, secret_key: str) -> responses.Prediction:
    """The prediction object as the client of the current request is shown it."""
    return serialize.prediction(row, base_url, secret_key=secret_key, show_aborted=shows_aborted())


def json_response(
    obj: BaseModel, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """``obj`` as a JSON response, serialized once (unset fields left out)."""
    return Response(
        obj.model_dump_json(exclude_unset=True),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


__all__ = ["json_response", "prediction_object"]
