"""Rows to the response objects of ``replicant.responses``: the one place that decides what a
prediction, training, model, version, deployment, file, account or collection looks like.

Shared by the API (responses) and the activities (webhook bodies), so both say the same.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from replicant import responses, tables
from replicant.deployments import deployment_demand
from replicant.fairness import DEFAULT_PRIORITY
from replicant.timeutil import isoformat
from replicant.usage import UsageReport


def body(obj: BaseModel) -> dict[str, Any]:
    """The JSON body of a response object (unset fields left out, see ``responses``)."""
    return obj.model_dump(mode="json", exclude_unset=True)


def stream_signature(object_id: str, secret_key: str, kind: str = "predictions") -> str:
    """The unguessable part of a prediction's or training's stream URL (the JS client sends
    no token); ``kind`` is ``predictions`` or ``trainings``."""
    subject = object_id if kind == "predictions" else f"{kind}/{object_id}"
    mac = hmac.new(secret_key.encode(), f"stream:{subject}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:24]).decode()


def stream_url(object_id: str, base_url: str, secret_key: str, kind: str = "predictions") -> str:
    sig = stream_signature(object_id, secret_key, kind)
    return f"{base_url}/v1/{kind}/{object_id}/stream?sig={sig}"


def _set(fields: dict[str, Any], **optional: Any) -> None:
    """Add the ``optional`` fields that have a value (the others stay unset)."""
    fields.update({k: v for k, v in optional.items() if v is not None})


def prediction(
    row: tables.Prediction, base_url: str, *, secret_key: str, show_aborted: bool = True
) -> responses.Prediction:
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
    fields: dict[str, Any] = {
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
    _set(
        fields,
        started_at=isoformat(row.started_at),
        completed_at=isoformat(row.completed_at),
        deadline=isoformat(row.deadline),
        deployment=row.deployment,
        metrics=row.metrics,
        hardware=row.hardware,
        trace_id=row.trace_id,
    )
    if row.webhook:
        _set(fields, webhook=row.webhook, webhook_events_filter=row.webhook_events_filter)
    return responses.Prediction.model_validate(fields)


def prediction_json(
    row: tables.Prediction, base_url: str, *, secret_key: str, show_aborted: bool = True
) -> dict[str, Any]:
    """``prediction`` as a JSON body (webhooks)."""
    return body(prediction(row, base_url, secret_key=secret_key, show_aborted=show_aborted))


def public_prediction(row: tables.Prediction, base_url: str) -> responses.PublicPrediction:
    """What a shared prediction shows to anyone: no logs, no webhook, no owner's secrets."""
    fields: dict[str, Any] = {
        "id": row.id,
        "model": row.model,
        "version": row.version,
        "status": row.status,
        "input": row.input if row.input is not None else {},
        "output": row.output,
        "error": row.error,
        "data_removed": row.data_removed,
        "created_at": isoformat(row.created_at),
        "started_at": isoformat(row.started_at),
        "completed_at": isoformat(row.completed_at),
        "urls": {"web": f"{base_url}/p/{row.id}"},
    }
    if row.metrics is not None and "predict_time" in row.metrics:
        fields["metrics"] = {"predict_time": row.metrics["predict_time"]}
    return responses.PublicPrediction.model_validate(fields)


def shared_prediction(
    row: tables.Prediction, base_url: str, *, secret_key: str
) -> responses.Prediction:
    """A prediction in the shape ``GET /v1/predictions/{id}`` has, as someone other than its
    owner is shown it (a model's examples): what ``public_prediction`` shows, so no logs, no
    webhook, no stream URL, no deployment and of the metrics only ``predict_time``."""
    fields = body(prediction(row, base_url, secret_key=secret_key))
    for owners_only in (
        "webhook",
        "webhook_events_filter",
        "deployment",
        "metrics",
        "hardware",
        "trace_id",
    ):
        fields.pop(owners_only, None)
    fields["urls"].pop("stream", None)
    fields["logs"] = ""
    shared = body(public_prediction(row, base_url))
    if "metrics" in shared:
        fields["metrics"] = shared["metrics"]
    return responses.Prediction.model_validate(fields)


def training(
    row: tables.Training,
    base_url: str,
    *,
    secret_key: str,
    weights_url: Callable[[str], str] | None = None,
) -> responses.Training:
    """The training object as ``GET /v1/trainings/{id}`` returns it.

    ``secret_key`` signs ``urls.stream`` (its logs, output and end as server-sent events);
    ``weights_url`` signs a URL of the stored weights (``output.weights``). Fields the spec
    types as non-nullable are left out while unknown.
    """
    fields: dict[str, Any] = {
        "id": row.id,
        "model": row.model,
        "version": row.version,
        "destination": row.destination,
        "input": row.input if row.input is not None else {},
        "logs": row.logs or "",
        "error": row.error,
        "status": row.status,
        "source": row.source,
        "created_at": isoformat(row.created_at),
        "urls": {
            "get": f"{base_url}/v1/trainings/{row.id}",
            "cancel": f"{base_url}/v1/trainings/{row.id}/cancel",
            "web": f"{base_url}/t/{row.id}",
            "stream": stream_url(row.id, base_url, secret_key, "trainings"),
        },
    }
    if row.output:
        fields["output"] = training_output(row, weights_url)
    _set(
        fields,
        started_at=isoformat(row.started_at),
        completed_at=isoformat(row.completed_at),
        metrics=row.metrics,
        hardware=row.hardware,
        trace_id=row.trace_id,
    )
    if row.webhook:
        _set(fields, webhook=row.webhook, webhook_events_filter=row.webhook_events_filter)
    return responses.Training.model_validate(fields)


def training_output(
    row: tables.Training, weights_url: Callable[[str], str] | None
) -> dict[str, Any]:
    """A training's ``output``: the new version, and the signed URL of its stored weights
    when ``weights_url`` signs one (what the training object and its stream both carry)."""
    output = dict(row.output or {})
    if row.weights_key and weights_url is not None:
        output["weights"] = weights_url(row.weights_key)
    return output


def training_json(
    row: tables.Training,
    base_url: str,
    *,
    secret_key: str,
    weights_url: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """``training`` as a JSON body (webhooks)."""
    return body(training(row, base_url, secret_key=secret_key, weights_url=weights_url))


def version(row: tables.Version) -> responses.Version:
    return responses.Version(
        id=row.id,
        created_at=isoformat(row.created_at),
        cog_version=row.cog_version,
        openapi_schema=row.openapi_schema,
    )


def model(
    row: tables.Model,
    latest: tables.Version | None,
    base_url: str,
    default_example: responses.Prediction | None = None,
) -> responses.Model:
    """The model object; ``default_example`` is its default example prediction, if any."""
    return responses.Model(
        url=f"{base_url}/{row.owner}/{row.name}",
        owner=row.owner,
        name=row.name,
        description=row.description,
        visibility=row.visibility,
        github_url=row.github_url,
        paper_url=row.paper_url,
        license_url=row.license_url,
        cover_image_url=row.cover_image_url,
        run_count=row.run_count,
        default_example=default_example,
        is_official=row.is_official,
        latest_version=version(latest) if latest is not None else None,
    )


def account(row: tables.Account) -> responses.Account:
    """``{type, username, name, github_url}``; an unset github_url is left out (spec: a URI)."""
    fields: dict[str, Any] = {
        "type": row.type,
        "username": row.username,
        "name": row.name or row.username,
        "fairness_weight": row.fairness_weight,
    }
    _set(fields, github_url=row.github_url or None)
    return responses.Account.model_validate(fields)


def creator(session: Session, username: str) -> responses.Creator:
    """The account that made a release, as far as it still exists."""
    row = session.exec(select(tables.Account).where(tables.Account.username == username)).first()
    fields: dict[str, Any] = {
        "type": row.type if row is not None else "user",
        "username": username,
        "name": (row.name if row is not None else "") or username,
    }
    if row is not None:
        _set(fields, github_url=row.github_url or None)
    return responses.Creator.model_validate(fields)


def deployment(session: Session, row: tables.Deployment) -> responses.Deployment:
    """A deployment as Replicate shows it, plus its live instances and queue depth."""
    release = session.exec(
        select(tables.DeploymentRelease).where(
            tables.DeploymentRelease.deployment_id == row.id,
            tables.DeploymentRelease.number == row.release,
        )
    ).first()
    assert release is not None
    counts = dict(
        session.exec(
            select(tables.DeploymentInstance.status, func.count())
            .where(tables.DeploymentInstance.deployment_id == row.id)
            .group_by(col(tables.DeploymentInstance.status))
        ).all()
    )
    waiting, running = deployment_demand(session, row.owner, row.name)
    return responses.Deployment(
        owner=row.owner,
        name=row.name,
        current_release=responses.DeploymentRelease(
            number=release.number,
            model=release.model,
            version=release.version,
            created_at=isoformat(release.created_at),
            created_by=creator(session, release.created_by),
            configuration=responses.DeploymentConfiguration(
                hardware=release.hardware,
                min_instances=release.min_instances,
                max_instances=release.max_instances,
            ),
        ),
        priority=row.priority or DEFAULT_PRIORITY,
        shared_hardware=row.shared_hardware,
        instances=int(counts.get("ready", 0)),
        instances_booting=int(counts.get("booting", 0)),
        instances_draining=int(counts.get("draining", 0)),
        queue_depth=waiting,
        running=running,
    )


def file(row: tables.StoredFile, base_url: str, download_url: str) -> responses.File:
    """The file object of Replicate's spec; ``download_url`` is its signed download URL."""
    return responses.File(
        id=row.id,
        name=row.name,
        content_type=row.content_type,
        size=row.size,
        etag=row.etag,
        checksums=responses.FileChecksums(sha256=row.sha256),
        metadata=row.user_metadata,
        created_at=isoformat(row.created_at),
        expires_at=isoformat(row.expires_at),
        urls=responses.FileUrls(get=f"{base_url}/v1/files/{row.id}", download=download_url),
    )


def collection_summary(row: tables.Collection) -> responses.CollectionSummary:
    return responses.CollectionSummary(name=row.name, slug=row.slug, description=row.description)


def collection(row: tables.Collection, models: list[responses.Model]) -> responses.Collection:
    """A collection with the models in it the caller may see."""
    return responses.Collection(
        name=row.name,
        slug=row.slug,
        description=row.description,
        full_description=row.full_description,
        models=models,
    )


def usage(report: UsageReport) -> responses.Usage:
    """A usage report as ``GET /v1/account/usage`` returns it."""
    return responses.Usage(
        account=report.account,
        start=isoformat(report.start) or "",
        end=isoformat(report.end) or "",
        runs=report.runs,
        predict_time=report.predict_time,
        cost=report.cost,
        lines=[responses.UsageLine.model_validate(vars(line)) for line in report.lines],
    )
