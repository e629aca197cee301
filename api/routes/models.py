"""Models, their versions, and the hardware they run on."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError
from sqlalchemy import delete as sql_delete
from sqlalchemy import exists, func, or_
from sqlmodel import Session, col, select

from api import push
from api.deps import CurrentAccount, DatabaseDep, SessionDep, StateDep
from api.errors import ProblemError, conflict, invalid, not_found
from api.launch import base_url
from api.modelaccess import OwnModelDep, VisibleModelDep, own_model
from api.modelexamples import default_example, forget_examples
from api.pagination import paginate
from api.serialize import json_response
from api.state import AppState
from replicant import responses, serialize
from replicant.builds import work_dir
from replicant.catalog import account_names, find_model
from replicant.cogmodel import CogConfigError, load_cog_config
from replicant.contracts import BuildRequest, NewModel
from replicant.ids import new_id
from replicant.objectkeys import build_archive
from replicant.tables import (
    Account,
    CollectionModel,
    Deployment,
    Model,
    Prediction,
    Training,
    Version,
)
from replicant.versions import content_hash

router = APIRouter(prefix="/v1", tags=["models"])
log = logging.getLogger("replicant.api")

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
Visibility = Literal["public", "private"]


def _web_url(value: str | None) -> str | None:
    """An absolute http(s) URL, as pages link to it: not ``javascript:``, ``data:`` or a
    relative path, and no whitespace or control characters a browser would strip."""
    if value is None:
        return None
    if any(ord(c) <= 32 or ord(c) == 127 for c in value):
        raise PydanticCustomError("web_url", "must be an http or https URL (no spaces)")
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise PydanticCustomError("web_url", "must be an http or https URL")
    return value


# A model's link fields, shown as links on its pages: http(s) only (422 naming the field).
WebUrl = Annotated[str | None, AfterValidator(_web_url)]


class ModelFields(BaseModel):
    """The fields a model's owner sets, at create and by ``PATCH``."""

    hardware: str | None = None
    description: str | None = None
    github_url: WebUrl = None
    paper_url: WebUrl = None
    license_url: WebUrl = None
    cover_image_url: WebUrl = None


class ModelCreate(ModelFields):
    owner: str
    name: str
    visibility: Visibility = "public"


class ModelUpdate(ModelFields):
    """Body of ``PATCH /v1/models/{owner}/{name}``; any other field is refused (422)."""

    model_config = ConfigDict(extra="forbid")

    visibility: Visibility | None = None
    readme: str | None = None


def _check_hardware(state: AppState, sku: str | None) -> None:
    if sku is not None and sku not in state.settings.hardware:
        known = ", ".join(state.settings.hardware)
        raise invalid(
            [{"field": "hardware", "message": f"unknown hardware {sku!r}; one of {known}"}]
        )


def _check_name(name: str) -> None:
    if not NAME.match(name):
        raise invalid(
            [{"field": "name", "message": "use lowercase letters, digits, '-', '_' and '.'"}]
        )


def _check_new_model(session: Session, account: Account, owner: str, name: str) -> None:
    """The caller may create ``owner/name``: 404 unknown owner, 403 not its own, 409 taken."""
    if owner not in account_names(session, account):
        owner_exists = session.exec(select(Account).where(Account.username == owner)).first()
        if owner_exists is None:
            raise not_found(f"Owner {owner}")
        raise ProblemError(403, f"You cannot create models owned by {owner}", title="Forbidden")
    taken = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).first()
    if taken is not None:
        raise conflict(f"A model named {owner}/{name} already exists", title="Conflict")


def model_object(
    session: Session, state: AppState, model: Model, base: str, owners: set[str]
) -> responses.Model:
    """The model object with its latest version and default example; ``owners`` are the
    names whose models the viewer owns (``account_names``): their examples show in full."""
    latest = session.get(Version, model.latest_version_id) if model.latest_version_id else None
    owner_view = model.owner in owners
    example = default_example(session, model, base, state.secret_key, owner_view=owner_view)
    return serialize.model(model, latest, base, example)


def _render_models(state: AppState, base: str, owners: set[str]) -> Any:
    def render(session: Session, models: Sequence[Model]) -> list[responses.Model]:
        return [model_object(session, state, model, base, owners) for model in models]

    return render


@router.get("/hardware")
async def list_hardware(state: StateDep, account: CurrentAccount) -> list[responses.Hardware]:
    """The SKUs this installation offers, as Replicate lists them."""
    names = state.settings.hardware_names
    return [
        responses.Hardware(name=names.get(sku, sku), sku=sku) for sku in state.settings.hardware
    ]


def _created(model: Model) -> datetime:
    return model.created_at


def _latest_version_created(model: Model) -> datetime:
    return model.latest_version_created_at or model.created_at


@router.get("/models", response_model_exclude_unset=True)
def list_models(
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
    cursor: str | None = None,
    sort_by: Literal["model_created_at", "latest_version_created_at"] = (
        "latest_version_created_at"
    ),
    sort_direction: Literal["asc", "desc"] = "desc",
) -> responses.ModelPage:
    """Public models and the caller's own (and its organizations'), by when their latest
    version (a model without one: the model) or the model was created, newest first unless
    ``sort_direction=asc``."""

    visible = account_names(session, account)
    stmt = select(Model).where(
        or_(col(Model.visibility) == "public", col(Model.owner).in_(visible))
    )
    base = base_url(request, state)
    sort: Any = col(Model.created_at)
    key: Callable[[Any], datetime] = _created
    if sort_by == "latest_version_created_at":
        sort = func.coalesce(col(Model.latest_version_created_at), col(Model.created_at))
        key = _latest_version_created
    params: dict[str, str] = {"sort_by": sort_by, "sort_direction": sort_direction}
    page = paginate(
        session,
        stmt,
        sort,
        col(Model.id),
        cursor=cursor,
        page_url=f"{base}/v1/models",
        render=_render_models(state, base, visible),
        params=params,
        descending=sort_direction == "desc",
        key=key,
    )
    return responses.ModelPage.model_validate(page)


@router.post("/models", status_code=201, response_model=responses.Model)
def create_model(
    body: ModelCreate,
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
) -> Response:
    _check_hardware(state, body.hardware)
    _check_name(body.name)
    _check_new_model(session, account, body.owner, body.name)
    model = Model(
        **body.model_dump(exclude={"hardware"}),
        hardware=body.hardware or state.settings.default_hardware,
    )
    session.add(model)
    session.commit()
    return json_response(serialize.model(model, None, base_url(request, state)), 201)


@router.get("/models/{owner}/{name}", response_model_exclude_unset=True)
def get_model(scope: VisibleModelDep) -> responses.Model:
    owners = account_names(scope.session, scope.account)
    return model_object(scope.session, scope.state, scope.model, scope.base, owners)


@router.patch("/models/{owner}/{name}", response_model_exclude_unset=True)
def update_model(
    owner: str,
    name: str,
    body: ModelUpdate,
    request: Request,
    state: StateDep,
    session: SessionDep,
    account: CurrentAccount,
) -> responses.Model:
    """Change description, readme, visibility, hardware (for new predictions) or URLs."""
    nulls = [f for f in ("visibility", "hardware") if f in body.model_fields_set]
    nulls = [f for f in nulls if getattr(body, f) is None]
    if nulls:  # every model has both: they can be changed, not removed
        raise invalid([{"field": f, "message": "must not be null"} for f in nulls])
    _check_hardware(state, body.hardware)
    model = own_model(session, account, owner, name)
    for field, value in body.model_dump(exclude_unset=True).items():
        setattr(model, field, value)
    session.add(model)
    session.commit()
    owners = account_names(session, account)
    return model_object(session, state, model, base_url(request, state), owners)


@router.get("/models/{owner}/{name}/readme", response_class=PlainTextResponse)
def get_model_readme(scope: VisibleModelDep) -> PlainTextResponse:
    """The model's README (Markdown, as plain text; empty when it has none)."""
    return PlainTextResponse(scope.model.readme or "")


@router.delete("/models/{owner}/{name}", status_code=204)
def delete_model(scope: OwnModelDep) -> Response:
    """Only your own, private models with no versions left can be deleted."""
    model, session = scope.model, scope.session
    if model.visibility != "private":
        raise conflict(
            "Only private models can be deleted; make the model private first",
            title="Model is public",
        )
    if session.exec(select(Version).where(Version.model_id == model.id)).first():
        raise conflict(
            "The model still has versions; delete every version first",
            title="Model has versions",
        )
    # Leaving its collections and examples first (no dangling rows).
    forget_examples(session, model_id=model.id)
    session.execute(sql_delete(CollectionModel).where(col(CollectionModel.model_id) == model.id))
    session.delete(model)
    session.commit()
    return Response(status_code=204)


@router.get("/models/{owner}/{name}/versions", response_model_exclude_unset=True)
def list_versions(scope: VisibleModelDep, cursor: str | None = None) -> responses.VersionPage:
    found, base, session = scope.model.id, scope.base, scope.session
    owner, name = scope.owner, scope.name
    page = paginate(
        session,
        select(Version).where(Version.model_id == found),
        col(Version.created_at),
        col(Version.id),
        cursor=cursor,
        page_url=f"{base}/v1/models/{owner}/{name}/versions",
        render=lambda _, rows: [serialize.version(v) for v in rows],
    )
    return responses.VersionPage.model_validate(page)


@router.get("/models/{owner}/{name}/versions/{version_id}", response_model_exclude_unset=True)
def get_version(
    owner: str, name: str, version_id: str, session: SessionDep, account: CurrentAccount
) -> responses.Version:
    model = find_model(session, account, owner, name)
    version = session.get(Version, version_id) if model is not None else None
    if model is None or version is None or version.model_id != model.id:
        raise not_found(f"Version {owner}/{name}:{version_id}")
    answer = serialize.version(version)
    if model.owner in account_names(session, account):
        # Beyond Replicate: why its model processes were stopped, for its owner only.
        answer.boot_logs = version.boot_logs
    return answer


@router.post(
    "/models/{owner}/{name}/versions",
    status_code=201,
    response_model=responses.Version,
    responses={200: {"model": responses.Version, "description": "The version existed"}},
)
async def push_version(
    owner: str,
    name: str,
    request: Request,
    state: StateDep,
    db: DatabaseDep,
    account: CurrentAccount,
    create: bool = False,
    visibility: Visibility | None = None,
    hardware: str | None = None,
    description: str | None = None,
) -> Response:
    """Push a Cog model directory (a .tar.gz/.tar/.zip body) as a new version.

    ``create=true`` creates the model (with ``visibility``, ``hardware``, ``description``)
    together with its first version. The version id is the content hash, so pushing the same
    files again answers the existing version (200). With ``Accept: application/x-ndjson``
    the build streams progress lines, then the version or the problem.
    """
    settings = state.settings
    await db.read(push.check_pusher, account, settings)
    _check_hardware(state, hardware)

    def target(session: Session) -> Model:
        if find_model(session, account, owner, name) is not None or not create:
            return own_model(session, account, owner, name)
        _check_name(name)
        _check_new_model(session, account, owner, name)
        return Model(
            owner=owner,
            name=name,
            visibility=visibility or "public",
            hardware=hardware or settings.default_hardware,
            description=description,
        )

    model = await db.read(target)
    ref = f"{owner}/{name}"
    build_id = new_id()
    key = build_archive(build_id)
    work = await asyncio.to_thread(work_dir, settings.data_dir)
    try:
        archive = work / "upload"
        await push.receive_archive(request, archive, settings.max_push_bytes)
        root = await asyncio.to_thread(push.unpack, archive, work, settings.max_push_bytes)
        # cog.yaml is cheap to check: refuse a bad one before any build starts.
        await asyncio.to_thread(load_cog_config, root)
        version_id = await asyncio.to_thread(content_hash, root, ref)
        store = await state.store()
        await asyncio.to_thread(push.store_archive, store, archive, key)
    except CogConfigError as err:
        raise push.build_problem(err) or err from err
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)

    new_model = None
    if model.id is None:
        new_model = NewModel(
            visibility=model.visibility, hardware=model.hardware, description=model.description
        )
    req = BuildRequest(
        id=build_id,
        owner=account.username,
        model=ref,
        version=version_id,
        archive_key=key,
        new_model=new_model,
        timeout=settings.build_timeout,
        heartbeat_timeout=settings.heartbeat_timeout,
    )
    await push.start_build(state, req)
    headers = {push.BUILD_HEADER: build_id}
    if push.NDJSON in request.headers.get("accept", ""):
        events = push.ndjson_events(state, build_id)
        return StreamingResponse(events, media_type=push.NDJSON, headers=headers)
    status, body = await push.wait_build(state, build_id)
    if status >= 400:
        raise push.as_problem(body, headers)  # a failed build names itself too
    return JSONResponse(body, status_code=status, headers=headers)


@router.delete(
    "/models/{owner}/{name}/versions/{version_id}", status_code=202, response_class=Response
)
async def delete_version(
    owner: str,
    name: str,
    version_id: str,
    state: StateDep,
    db: DatabaseDep,
    account: CurrentAccount,
) -> Response:
    """Every rule of Replicate's delete-a-model guide, plus one of this installation: no run
    of the version may be in flight (it needs the version's files); each refusal says which.
    The version's directory under the data dir goes with it."""

    def delete(session: Session) -> Path | None:
        model = own_model(session, account, owner, name)
        version = session.get(Version, version_id)
        if version is None or version.model_id != model.id:
            raise not_found(f"Version {owner}/{name}:{version_id}")
        if model.visibility != "private":
            raise conflict(
                "Versions can only be deleted from private models", title="Model is public"
            )
        others_ran = session.exec(
            select(
                exists().where(
                    col(Prediction.version) == version_id,
                    col(Prediction.owner).not_in(account_names(session, account)),
                )
            )
        ).one()
        if others_ran:
            raise conflict(
                "Someone other than you has run predictions with this version",
                title="Version is in use",
            )
        if session.exec(select(Version).where(Version.base_version_id == version_id)).first():
            raise conflict("This version is the base of a fine-tune", title="Version is in use")
        if _used_by_deployment(session, version_id):
            raise conflict("A deployment uses this version", title="Version is in use")
        if _runs_in_flight(session, version_id):
            raise conflict(
                "A prediction or training of this version is in progress; delete the version "
                "once it has ended",
                title="Version is in use",
            )
        own_dir = _own_directory(session, state.settings.data_dir, version)
        session.delete(version)
        session.flush()
        if model.latest_version_id == version_id:
            newest = session.exec(
                select(Version)
                .where(Version.model_id == model.id)
                .order_by(col(Version.created_at).desc())
            ).first()
            model.latest_version_id = newest.id if newest is not None else None
            model.latest_version_created_at = newest.created_at if newest else None
            session.add(model)
        session.commit()
        return own_dir

    own_dir = await db.run(delete)
    if own_dir is not None:
        await asyncio.to_thread(shutil.rmtree, own_dir, True)
    return Response(status_code=202)


def _runs_in_flight(session: Session, version_id: str) -> bool:
    """A prediction or training of the version is waiting or running."""
    in_flight = ("starting", "processing")
    for table in (Prediction, Training):
        found = exists().where(col(table.version) == version_id, col(table.status).in_(in_flight))
        if session.exec(select(found)).one():
            return True
    return False


def _own_directory(session: Session, data_dir: Path, version: Version) -> Path | None:
    """The version's directory under ``<data dir>/versions/``, if it is its own: a
    fine-tune runs from its base's directory, which stays."""
    if not version.model_dir:
        return None
    path = Path(version.model_dir)
    if path.resolve() != (data_dir / "versions" / version.id).resolve():
        return None
    shared = select(
        exists().where(col(Version.model_dir) == version.model_dir, col(Version.id) != version.id)
    )
    return None if session.exec(shared).one() else path


def _used_by_deployment(session: Session, version_id: str) -> bool:
    """A deployment's current release runs this version."""
    return bool(session.exec(select(exists().where(col(Deployment.version) == version_id))).one())
