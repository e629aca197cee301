"""Trainings (list and page) and deployments (release, instances, and their settings)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from api.dashboard.client import ApiProblem
from api.dashboard.pages import cursor_of, temporal_ui
from api.dashboard.render import is_cut
from api.dashboard.web import FormDep, PageDep, redirect, render
from api.routes.streams import event_cursor
from replicant.contracts import training_workflow_id

router = APIRouter(include_in_schema=False)


@router.get("/trainings")
async def trainings_page(page: PageDep, cursor: str = "") -> Response:
    body = await page.api.get("/v1/trainings", cursor=cursor)
    return render(
        page.request,
        "trainings.html",
        page=page,
        trainings=body["results"],
        next=cursor_of(body["next"]),
        previous=cursor_of(body["previous"]),
    )


@router.get("/trainings/{training_id}")
async def training_page(training_id: str, page: PageDep) -> Response:
    training = await page.api.get(f"/v1/trainings/{training_id}")
    return render(
        page.request,
        "training.html",
        page=page,
        t=training,
        input_cut=is_cut(training["input"]),
        cursor=event_cursor(training.get("output"), training["logs"]),
        temporal_url=temporal_ui(page.request, training_workflow_id(training_id)),
    )


@router.post("/trainings/{training_id}/cancel")
async def cancel_training(training_id: str, page: PageDep, form: FormDep) -> Response:
    await page.api.post(f"/v1/trainings/{training_id}/cancel")
    return redirect(page.request, f"/trainings/{training_id}")


async def _deployments(page: Any) -> list[dict[str, Any]]:
    body = await page.api.get("/v1/deployments")
    results: list[dict[str, Any]] = body["results"]
    return results


@router.get("/deployments")
async def deployments_page(page: PageDep) -> Response:
    deployments = await _deployments(page)
    hardware = await page.api.get("/v1/hardware")
    return render(
        page.request,
        "deployments.html",
        page=page,
        deployments=deployments,
        hardware=hardware,
        errors={},
        problem=None,
    )


def _number(text: object) -> Any:
    value = str(text or "").strip()
    return int(value) if value.isdigit() else value


@router.post("/deployments/{owner}/{name}")
async def edit_deployment(owner: str, name: str, page: PageDep, form: FormDep) -> Response:
    """Change min/max instances and hardware through PATCH /v1/deployments/{owner}/{name}."""
    change = {
        "min_instances": _number(form.get("min_instances")),
        "max_instances": _number(form.get("max_instances")),
        "hardware": str(form.get("hardware") or ""),
    }
    try:
        await page.api.patch(f"/v1/deployments/{owner}/{name}", change)
    except ApiProblem as err:
        if err.status not in (400, 422):
            raise
        return render(
            page.request,
            "deployments.html",
            422,
            page=page,
            deployments=await _deployments(page),
            hardware=await page.api.get("/v1/hardware"),
            errors={f"{owner}/{name}": err.fields},
            problem=err,
        )
    return redirect(page.request, "/deployments")
