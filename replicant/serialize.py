"""The prediction object exactly as ``GET /v1/predictions/{id}`` returns it.

Shared by the API (responses) and the activities (webhook bodies), so both say the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from replicant.tables import Prediction
from replicant.timeutil import isoformat


def stream_signature(prediction_id: str, secret_key: str) -> str:
    """The unguessable part of a prediction's stream URL (the JS client sends no token)."""
    mac = hmac.new(secret_key.encode(), f"stream:{prediction_id}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:24]).decode()


def stream_url(prediction_id: str, base_url: str, secret_key: str) -> str:
    sig = stream_signature(prediction_id, secret_key)
    return f"{base_url}/v1/predictions/{prediction_id}/stream?sig={sig}"


def prediction_json(
    row: Prediction, base_url: str, *, secret_key: str, show_aborted: bool = True
) -> dict[str, Any]:
    """The prediction object exactly as ``GET /v1/predictions/{id}`` returns it.

    ``secret_key`` signs ``urls.stream``. Fields the spec types as non-nullable strings are
    left out while unknown. Without ``show_aborted``, ``aborted`` reads ``canceled``.
    """
    urls = {
        "get": f"{base_url}/v1/predictions/{row.id}",
        "cancel": f"{base_url}/v1/predictions/{row.id}/cancel",
        "web": f"{base_url}/p/{row.id}",
    }
    if row.stream:
        urls["stream"] = stream_url(row.id, base_url, secret_key)
    body: dict[str, Any] = {
        "id": row.id,
        "model": row.model,
        "version": row.version,
        "input": row.input if row.input is not None else {},
        "logs": row.logs or "",
        "output": row.output,
        "data_removed": row.data_removed,
        "error": row.error,
        "status": "canceled" if row.status == "aborted" and not show_aborted else row.status,
        "source": row.source,
        "created_at": isoformat(row.created_at),
        "urls": urls,
    }
    optional = {
        "started_at": isoformat(row.started_at),
        "completed_at": isoformat(row.completed_at),
        "deadline": isoformat(row.deadline),
        "deployment": row.deployment,
        "metrics": row.metrics,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if row.webhook:
        body["webhook"] = row.webhook
        if row.webhook_events_filter is not None:
            body["webhook_events_filter"] = row.webhook_events_filter
    return body
