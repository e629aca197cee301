"""Read-model rows to the JSON shapes of Replicate's OpenAPI spec."""

from __future__ import annotations

from typing import Any

from replicant.tables import Model, Prediction, Version
from replicant.timeutil import isoformat


def prediction_json(row: Prediction, base_url: str) -> dict[str, Any]:
    """The prediction object exactly as ``GET /v1/predictions/{id}`` returns it.

    Fields the spec types as non-nullable strings are left out while unknown.
    """
    urls = {
        "get": f"{base_url}/v1/predictions/{row.id}",
        "cancel": f"{base_url}/v1/predictions/{row.id}/cancel",
        "web": f"{base_url}/p/{row.id}",
    }
    if row.stream:
        urls["stream"] = f"{base_url}/v1/predictions/{row.id}/stream"
    body: dict[str, Any] = {
        "id": row.id,
        "model": row.model,
        "version": row.version,
        "input": row.input if row.input is not None else {},
        "logs": row.logs or "",
        "output": row.output,
        "data_removed": row.data_removed,
        "error": row.error,
        "status": row.status,
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


def version_json(version: Version) -> dict[str, Any]:
    return {
        "id": version.id,
        "created_at": isoformat(version.created_at),
        "cog_version": version.cog_version,
        "openapi_schema": version.openapi_schema,
    }


def model_json(model: Model, latest: Version | None, base_url: str) -> dict[str, Any]:
    return {
        "url": f"{base_url}/{model.owner}/{model.name}",
        "owner": model.owner,
        "name": model.name,
        "description": model.description,
        "visibility": model.visibility,
        "github_url": model.github_url,
        "paper_url": model.paper_url,
        "license_url": model.license_url,
        "cover_image_url": model.cover_image_url,
        "run_count": model.run_count,
        "default_example": None,
        "is_official": False,
        "latest_version": version_json(latest) if latest is not None else None,
    }
