"""The dashboard's pages: sign in and out, models and the Run form, predictions."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlparse

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse
from starlette.datastructures import UploadFile

from api.dashboard.client import ApiProblem, api_for
from api.dashboard.forms import Uploader, form_fields, form_input, form_values
from api.dashboard.render import snippets
from api.dashboard.session import load_session, new_csrf
from api.dashboard.web import FormDep, Page, PageDep, checked_form, redirect, render
from api.deps import get_state
from api.routes.streams import TABLES, LastEventId, event_cursor, events_response
from replicant.accounts import find_account
from replicant.catalog import find_model
from replicant.contracts import prediction_workflow_id

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
    return render(request, "signin.html", next=safe_next(next), error=None)


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await checked_form(request)
    token = str(form.get("token") or "").strip()
    target = safe_next(str(form.get("next") or "/"))
    async with api_for(request, token) as api:
        try:
            await api.get("/v1/account")
        except ApiProblem as err:
            error = "That token is not valid" if err.status == 401 else err.detail
            return render(request, "signin.html", 401, next=target, error=error)
    session = load_session(request)
    session.token = token
    session.csrf = new_csrf()  # a new session gets a new CSRF token
    return redirect(request, target)


@router.post("/signout")
async def signout(request: Request, form: FormDep) -> Response:
    load_session(request).token = None
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


def _hardware(request: Request, username: str, owner: str, name: str) -> str | None:
    """The name of the hardware the model runs on (the API's model object has no field for
    it), found through the catalog's own visibility rule."""
    state = get_state(request)
    account = find_account(state.engine, username)
    model = state.db.call(find_model, account, owner, name)
    if model is None:
        return None
    return state.settings.hardware_names.get(model.hardware, model.hardware)


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
    fields = form_fields(latest["openapi_schema"]) if latest else []
    return {"model": model, "versions": versions["results"], "fields": fields}


@router.get("/models/{owner}/{name}")
async def model_page(owner: str, name: str, page: PageDep) -> Response:
    view = await _model_view(page, owner, name)
    return render(page.request, "model.html", page=page, errors={}, values={}, version=None, **view)


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
    return render(
        page.request,
        "prediction.html",
        page=page,
        p=prediction,
        shared=shared,
        streaming="stream" in prediction["urls"],
        cursor=event_cursor(prediction.get("output"), prediction["logs"]),
        snippets=snippets(base, ref, prediction["input"]),
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
