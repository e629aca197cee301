"""Read-model rows to the JSON shapes of Replicate's OpenAPI spec."""

from __future__ import annotations

from typing import Any

from api.deadlines import shows_aborted
from replicant import serialize
from replicant.tables import Model, Prediction, Version
from replicant.timeutil import isoformat


def version_json(version: Version) -> dict[str, Any]:
    return {
        "id": version.id,
        "created_at": isoformat(version.created_at),
        "cog_version": version.cog_version,
        "openapi_schema": version.openapi_schema,
    }


def model_json(
    model: Model,
    latest: Version | None,
    base_url: str,
    default_example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model object; ``default_example`` is its default example prediction, if any."""
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
        "default_example": default_example,
        "is_official": model.is_official,
        "latest_version": version_json(latest) if latest is not None else None,
    }


def prediction_json(row: Prediction, base_url: str, *, secret_key: str) -> dict[str, Any]:
    """The prediction object as the client of the current request is shown it."""
    return serialize.prediction_json(
        row, base_url, secret_key=secret_key, show_aborted=shows_aborted()
    )


__all__ = ["model_json", "prediction_json", "version_json"]
