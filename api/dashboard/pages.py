"""The dashboard's pages: sign in and out, models and the Run form, predictions."""

from __future__ import annotations

import asyncio
import functools
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlparse

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from starlette.datastructures import UploadFile

from api.dashboard.client import ApiProblem, api_for
from api.dashboard.downloads import input_previews
from api.dashboard.forms import (
    Uploader,
    form_fields,
    form_input,
    form_values,
    input_values,
    output_type,
)
from api.dashboard.render import code_input, is_cut, snippets
from api.dashboard.session import end_session, load_session, open_session, token_id_of
from api.dashboard.web import FormDep, Page, PageDep, read_form, redirect, render
from api.deps import get_state
from api.routes.streams import TABLES, LastEventId, event_cursor, events_response
from replicant.accounts import find_account
from replicant.bootlogs import owned_boot_logs
from replicant.catalog import find_model
from replicant.contracts import prediction_workflow_id
from replicant.devices import discover_devices

router = APIRouter(include_in_schema=False)

# How many model pages the list reads for its search box.
MODEL_PAGES = 5


def cursor_of(url: str | None) -> str | None:
    """The ``cursor`` parameter of an API page URL (``next``/``previous``)."""
    if not url:
        return None
    return parse_qs(urlparse(url).query).get("cursor", [None])[0]


def safe_next(target: str | None) -> str:
    """Only paths of this site after sign-in (never another origin)."""
    # "//host" and "/\\host" are other origins to a browser.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@router.get("/signin")
async def signin_page(request: Request, next: str = "/") -> Response:
    await load_session(request)  # a signed-in visitor's form carries that session's CSRF
    return render(request, "signin.html", next=safe_next(next), error=None)


# The sign-in form: its CSRF token, the API token and where to go next.
SIGNIN_FIELDS = 8
SIGNIN_PART = 4096


@router.post("/signin")
async def signin(request: Request) -> Response:
    """Check the token through the API (its rate limit and all), then open a new session."""
    form = await read_form(
        request, max_fields=SIGNIN_FIELDS, max_files=0, max_part_size=SIGNIN_PART
    )
    token = str(form.get("token") or "").strip()
    target = safe_next(str(form.get("next") or "/"))
    async with api_for(request, token=token) as api:
        try:
            await api.get("/v1/account")
        except ApiProblem as err:
            error = "That token is not valid" if err.status == 401 else err.detail
            return render(request, "signin.html", 401, next=target, error=error)
    found = await get_state(request).db.read(token_id_of, token)
    if found is None:  # revoked between the two reads
        return render(request, "signin.html", 401, next=target, error="That token is not valid")
    await open_session(request, *found)
    return redirect(request, target)


@router.post("/signout")
async def signout(request: Request, form: FormDep) -> Response:
    """End the session: its id is deleted, so a saved cookie signs nobody in."""
    await end_session(request)
    return redirect(request, "/signin")


@router.get("/")
async def models_page(page: PageDep, q: str = "") -> Response:
    """Models the account may see (its own, its organizations', public), filtered by ``q``."""
    models: list[dict[str, Any]] = []
    cursor = None
    for _ in range(MODEL_PAGES):
        body = await page.api.get("/v1/models", cursor=cursor)
        models.extend(body["results"])
        cursor = cursor_of(body["next"])
        if cursor is None:
            break
    needle = q.strip().lower()
    if needle:
        models = [
            m
            for m in models
            if needle in f"{m['owner']}/{m['name']}".lower()
            or needle in (m.get("description") or "").lower()
        ]
    return render(page.request, "models.html", page=page, models=models, q=q)


@functools.cache
def _has_gpu(configured: str | None) -> bool:
    """Whether this installation has GPUs (asked once: ``nvidia-smi`` is no per-page call)."""
    return bool(discover_devices(configured))


def _hardware(request: Request, username: str, owner: str, name: str) -> dict[str, Any] | None:
    """The hardware the model runs on (the API's model object has no field for it), found
    through the catalog's own visibility rule: its name, and whether a GPU SKU runs on the
    CPU here (an installation without GPUs serves every SKU on the CPU)."""
    state = get_state(request)
    account = find_account(state.engine, username)
    model = state.db.call(find_model, account, owner, name)
    if model is None:
        return None
    settings = state.settings
    on_cpu = model.hardware.startswith("gpu") and not _has_gpu(settings.gpu_devices)
    return {"name": settings.hardware_names.get(model.hardware, model.hardware), "on_cpu": on_cpu}


def _boot_logs(request: Request, username: str, owner: str, name: str) -> dict[str, str]:
    """The boot logs of the model's versions (why their processes were stopped), by version
    id, for its owner only (they hold what the model printed)."""
    state = get_state(request)
    account = find_account(state.engine, username)
    model = state.db.call(find_model, account, owner, name)
    if model is None:
        return {}
    return state.db.call(owned_boot_logs, account, model)


async def _model_view(page: Page, owner: str, name: str) -> dict[str, Any]:
    model = await page.api.get(f"/v1/models/{owner}/{name}")
    username = page.account["username"]
    model["hardware"] = await asyncio.to_thread(_hardware, page.request, username, owner, name)
    # The README route, where the API has one (empty text: no README).
    readme = await page.api.http.get(f"/v1/models/{owner}/{name}/readme")
    if readme.status_code == 200 and readme.text.strip():
        model["readme"] = readme.text
    versions = await page.api.get(f"/v1/models/{owner}/{name}/versions")
    latest = model.get("latest_version")
    schema = latest["openapi_schema"] if latest else {}
    boot_logs = await asyncio.to_thread(_boot_logs, page.request, username, owner, name)
    return {
        "model": model,
        "versions": versions["results"],
        "boot_logs": boot_logs,
        "fields": form_fields(schema) if latest else [],
        "output_type": output_type(schema) if latest else "",
    }


@router.get("/models/{owner}/{name}")
async def model_page(owner: str, name: str, page: PageDep, tweak: str = "") -> Response:
    """The model, its schema and Run form; ``?tweak=<prediction id>`` fills the form with that
    prediction's input (and its version)."""
    view = await _model_view(page, owner, name)
    values: dict[str, str] = {}
    version = None
    if tweak and view["model"]["latest_version"]:
        prediction = await page.api.get(f"/v1/predictions/{tweak}")
        if prediction["model"] == f"{owner}/{name}":
            version = prediction["version"]
            if version != view["model"]["latest_version"]["id"]:
                path = f"/v1/models/{owner}/{name}/versions/{version}"
                view["fields"] = form_fields((await page.api.get(path))["openapi_schema"])
            values = input_values(view["fields"], prediction["input"])
    return render(
        page.request, "model.html", page=page, errors={}, values=values, version=version,
        tweaked=tweak if values else "", **view,
    )  # fmt: skip


def _uploader(page: Page) -> Uploader:
    """Files picked in the Run form go through the Files API, as the official clients send
    them: the input names the file by its URL at the installation's public address (the
    one input staging knows as its own), so the code snippets show it exactly."""
    public = get_state(page.request).settings.resolved_public_url

    async def upload(picked: UploadFile) -> str:
        stored = await page.api.upload(picked)
        return f"{public}/v1/files/{stored['id']}"

    return upload


@router.post("/models/{owner}/{name}/run")
async def run_model(owner: str, name: str, page: PageDep, form: FormDep) -> Response:
    """Create a prediction from the Run form through POST /v1/predictions; a 422 goes back to
    the form with each message beside its field."""
    view = await _model_view(page, owner, name)
    latest = view["model"]["latest_version"]
    if latest is None:
        raise ApiProblem(404, {"detail": f"Model {owner}/{name} has no versions"})
    # The version the form was drawn from, even when a newer one was pushed since.
    version_id = str(form.get("version") or latest["id"])
    if version_id != latest["id"]:
        version = await page.api.get(f"/v1/models/{owner}/{name}/versions/{version_id}")
        view["fields"] = form_fields(version["openapi_schema"])
    payload = await form_input(view["fields"], form, _uploader(page))
    body = {"version": f"{owner}/{name}:{version_id}", "input": payload}
    try:
        prediction = await page.api.post("/v1/predictions", body)
    except ApiProblem as err:
        if err.status not in (400, 422):
            raise
        return render(
            page.request, "model.html", 422, page=page, errors=err.fields, problem=err,
            values=form_values(form), version=version_id, **view,
        )  # fmt: skip
    return redirect(page.request, f"/predictions/{prediction['id']}")


@router.get("/predictions")
async def predictions_page(
    page: PageDep,
    status: str = "",
    model: str = "",
    source: str = "",
    created_after: str = "",
    created_before: str = "",
    cursor: str = "",
) -> Response:
    """The account's predictions with the API's filters, a page at a time (the API's cursors)."""
    filters = {
        "status": status,
        "model": model,
        "source": source,
        "created_after": created_after,
        "created_before": created_before,
    }
    body = await page.api.get("/v1/predictions", cursor=cursor, page_size=50, **filters)
    return render(
        page.request,
        "predictions.html",
        page=page,
        predictions=body["results"],
        filters=filters,
        keep=urlencode({k: v for k, v in filters.items() if v}),
        next=cursor_of(body["next"]),
        previous=cursor_of(body["previous"]),
    )


def temporal_ui(request: Request, workflow_id: str) -> str:
    """The workflow's page in the Temporal UI."""
    settings = get_state(request).settings
    namespace = settings.temporal_namespace
    return f"{settings.resolved_temporal_ui_url}/namespaces/{namespace}/workflows/{workflow_id}"


@router.get("/predictions/{prediction_id}")
async def prediction_page(prediction_id: str, page: PageDep) -> Response:
    prediction = await page.api.get(f"/v1/predictions/{prediction_id}")
    shared = await _shared(page, prediction_id)
    base = str(page.request.base_url).rstrip("/")
    ref = f"{prediction['model']}:{prediction['version']}"
    # Long values are cut on the page (a 5 MB input would be in it four times); the whole
    # input, output and code are downloads.
    code = code_input(prediction["input"])
    return render(
        page.request,
        "prediction.html",
        page=page,
        p=prediction,
        shared=shared,
        streaming="stream" in prediction["urls"],
        cursor=event_cursor(prediction.get("output"), prediction["logs"]),
        snippets=snippets(base, ref, code),
        code_cut=code != prediction["input"],
        input_cut=is_cut(prediction["input"]),
        previews=await input_previews(page, prediction),
        temporal_url=temporal_ui(page.request, prediction_workflow_id(prediction_id)),
    )


async def _shared(page: Page, prediction_id: str) -> bool:
    """Whether the prediction's public page answers (the sharing route's own rule)."""
    response = await page.api.http.get(f"/p/{prediction_id}")
    return bool(response.status_code == 200)


@router.get("/predictions/{object_id}/events")
@router.get("/trainings/{object_id}/events")
async def events_page(
    object_id: str, page: PageDep, after: str = "", last_event_id: LastEventId = None
) -> EventSourceResponse:
    """The logs, output and end of one of the account's predictions or trainings as
    server-sent events after ``after``: the API's stream, for those the API's own read lets
    the account see (404 for anyone else's); a non-streaming prediction has no signed URL."""
    kind = page.request.scope["route"].path.split("/")[1]  # predictions or trainings
    await page.api.get(f"/v1/{kind}/{object_id}")
    state = get_state(page.request)
    return events_response(state, TABLES[kind], object_id, last_event_id or after)


@router.post("/predictions/{prediction_id}/{action}")
async def prediction_action(
    prediction_id: str,
    action: Annotated[str, Path(pattern="^(cancel|share|unshare)$")],
    page: PageDep,
    form: FormDep,
) -> Response:
    """Cancel, share or unshare through the API's routes of the same names."""
    await page.api.post(f"/v1/predictions/{prediction_id}/{action}")
    return redirect(page.request, f"/predictions/{prediction_id}")
