"""The ``replicant`` command: the embedded stack, the API, workers and accounts."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import uvloop
from rich.console import Console

from replicant.datadir import secure_data_dir, start_private
from replicant.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from replicant.tables import Deployment

app = typer.Typer(
    help="Replicant: a self-hosted, Replicate-compatible model API.", no_args_is_help=True
)
accounts_app = typer.Typer(help="Manage accounts.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")
tokens_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
orgs_app = typer.Typer(help="Manage organizations and their members.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")
models_app = typer.Typer(help="Manage models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
collections_app = typer.Typer(help="Manage collections of models.", no_args_is_help=True)
app.add_typer(collections_app, name="collections")
deployments_app = typer.Typer(help="Operate deployments.", no_args_is_help=True)
app.add_typer(deployments_app, name="deployments")
db_app = typer.Typer(help="Database migrations (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()
# The options of the commands that call the API (push, usage).
ApiUrl = Annotated[
    str | None,
    typer.Option("--url", envvar="REPLICATE_BASE_URL", help="The API (default: settings)."),
]
ApiTokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="REPLICATE_API_TOKEN", help="API token (default: settings)."),
]


def _logging(settings: Settings) -> None:
    from replicant.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)


@app.command()
def dev() -> None:
    """Run the whole embedded stack in the foreground; Ctrl-C stops all of it."""
    from replicant.devstack import Stack

    settings = get_settings()
    stack = Stack(settings)
    console.print("[bold]Replicant[/bold]: preparing the data dir and built-in models...")
    try:
        token = stack.start()
    except BaseException:
        stack.stop()
        raise
    console.print(
        f"\n  API          {settings.resolved_public_url}\n"
        f"  Dashboard    {settings.resolved_public_url}/  (sign in with the API token)\n"
        f"  API token    {token}\n"
        f"  Temporal UI  {settings.resolved_temporal_ui_url}\n\n"
        f"  export REPLICATE_API_TOKEN={token}\n"
        f"  export REPLICATE_BASE_URL={settings.resolved_public_url}\n\n"
        "Ctrl-C stops everything.",
        highlight=False,
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stopping:
            for name, proc in list(stack.procs.items()):
                if proc.poll() is not None:
                    console.print(f"[red]{name} exited with {proc.returncode}; stopping[/red]")
                    stopping = True
            time.sleep(0.5)
    finally:
        console.print("stopping...")
        stack.stop()


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for forwarded headers: believed from the trusted proxies only, and
    from nobody (not even loopback, uvicorn's default) when there are none."""
    if not settings.trusted_proxies:
        return {"proxy_headers": False, "forwarded_allow_ips": ""}
    return {"proxy_headers": True, "forwarded_allow_ips": ",".join(settings.trusted_proxies)}


@app.command()
def api() -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    from replicant.metrics import temporal_runtime

    settings = get_settings()
    _logging(settings)
    start_private(settings)
    temporal_runtime(settings)
    uvicorn.run(
        "api.app:app",
        **proxy_options(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # our handler (JSON lines) for uvicorn's loggers too
        access_log=False,
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
    )


@app.command()
def worker(
    hardware: Annotated[
        list[str] | None,
        typer.Option("--hardware", help="Serve only these hardware SKUs (repeatable)."),
    ] = None,
    no_orchestration: Annotated[
        bool, typer.Option("--no-orchestration", help="Do not run workflows here.")
    ] = False,
) -> None:
    """Run a worker: the orchestration queue and the hardware queues."""
    from replicant.metrics import serve_worker_metrics, temporal_runtime
    from workers.main import run_worker

    settings = get_settings()
    _logging(settings)
    secure_data_dir(settings)
    temporal_runtime(settings, metrics_port=settings.temporal_metrics_port)
    serve_worker_metrics(settings, hardware)
    # uvloop, as uvicorn runs the API: the worker's activities, workflow activations and
    # model-process I/O all go through this one event loop.
    uvloop.run(run_worker(settings, orchestration=not no_orchestration, hardware=hardware))


@app.command()
def seed() -> None:
    """Create the database tables and the built-in models."""
    from replicant.db import init_db, make_engine
    from replicant.versions import seed_builtin_models

    # A one-shot command: the workers build the real models' envs on first use.
    settings = get_settings().model_copy(update={"prebuild_envs": False})
    secure_data_dir(settings)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine, secret_key=settings.ensure_secret_key())
    for version in seed_builtin_models(settings, engine):
        console.print(version.id)


@app.command()
def push(
    directory: Annotated[
        Path, typer.Argument(help="The Cog model directory (with cog.yaml).", file_okay=False)
    ],
    model: Annotated[str, typer.Argument(help="owner/name of the model to push to.")],
    create: Annotated[
        bool, typer.Option("--create", help="Create the model if it does not exist.")
    ] = False,
    private: Annotated[bool, typer.Option("--private", help="Create it private.")] = False,
    hardware: Annotated[
        str | None, typer.Option("--hardware", help="Create it on this hardware SKU.")
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Create it with this description.")
    ] = None,
    url: ApiUrl = None,
    token: ApiTokenOption = None,
) -> None:
    """Push a Cog model directory as a new version of owner/name."""
    import httpx
    from rich.markup import escape

    from replicant.pushing import PushError, PushOptions, push_model

    settings = get_settings()
    token = _api_token(settings, token)
    options = PushOptions(
        create=create, private=private, hardware=hardware, description=description
    )
    try:
        version = push_model(
            directory,
            model,
            url=url or settings.resolved_public_url,
            token=token,
            options=options,
            console=console,
        )
    except (PushError, httpx.HTTPError) as err:
        reason = str(err) if isinstance(err, PushError) else f"{type(err).__name__}: {err}"
        console.print(f"[red]Push failed[/red]: {escape(reason)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    verb = "Pushed" if version.get("_created", True) else "Already pushed"
    console.print(f"{verb} [bold]{model}:{version['id']}[/bold]", highlight=False, soft_wrap=True)


def _api_token(settings: Settings, token: str | None) -> str:
    """The token given, else the settings', else the data dir's; exit 2 without one."""
    token = token or settings.api_token
    token_file = settings.data_dir / "api-token"
    if not token and token_file.is_file():
        token = token_file.read_text().strip()
    if not token:
        console.print("[red]No API token: pass --token or set REPLICATE_API_TOKEN[/red]")
        raise typer.Exit(2)
    return token


@app.command()
def usage(
    start: Annotated[
        str | None, typer.Option("--start", help="From (ISO 8601; default: this month).")
    ] = None,
    end: Annotated[str | None, typer.Option("--end", help="Until (default: now).")] = None,
    account: Annotated[
        str | None, typer.Option("--account", help="One of your organizations.")
    ] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    url: ApiUrl = None,
    token: ApiTokenOption = None,
) -> None:
    """What your runs (or an organization's) cost over a period, by model and hardware."""
    import httpx
    from rich.table import Table

    settings = get_settings()
    params = {
        k: v for k, v in {"start": start, "end": end, "account": account}.items() if v is not None
    }
    if as_csv:
        params["format"] = "csv"
    base = (url or settings.resolved_public_url).rstrip("/")
    headers = {"Authorization": f"Bearer {_api_token(settings, token)}"}
    try:
        answer = httpx.get(f"{base}/v1/account/usage", params=params, headers=headers, timeout=60)
    except httpx.HTTPError as err:
        console.print(f"[red]Usage failed[/red]: {type(err).__name__}: {err}", highlight=False)
        raise typer.Exit(1) from None
    if answer.status_code != 200:
        detail = answer.json().get("detail", answer.text) if answer.content else answer.text
        console.print(f"[red]Usage failed[/red]: {detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if as_csv:
        typer.echo(answer.text, nl=False)
        return
    report = answer.json()
    table = Table(title=f"{report['account']}: {report['start']} to {report['end']}")
    for column in ("kind", "model", "hardware", "runs", "predict_time", "cost"):
        table.add_column(column)
    for line in report["lines"]:
        table.add_row(
            *(str(line[c]) for c in ("kind", "model", "hardware", "runs")),
            f"{line['predict_time']:.3f}",
            f"{line['cost']:.6f}",
        )
    table.add_row(
        "total",
        "",
        "",
        str(report["runs"]),
        f"{report['predict_time']:.3f}",
        f"{report['cost']:.6f}",
    )
    console.print(table)


@accounts_app.command("create")
def accounts_create(name: str) -> None:
    """Create an account and print its first API token (shown once)."""
    from replicant.accounts import create_account
    from replicant.db import init_db, make_engine

    settings = get_settings()
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    _, token = create_account(engine, name)
    print(token)


@accounts_app.command("set-weight")
def accounts_set_weight(name: str, weight: float) -> None:
    """Set NAME's share of busy hardware queues against other accounts (default 1.0)."""
    from replicant.accounts import AccountError, set_weight

    try:
        set_weight(_accounts_engine(), name, weight)
    except AccountError as err:
        _refuse(err)
    print(f"{name} has fairness weight {weight:g}")


@deployments_app.command("set-priority")
def deployments_set_priority(
    deployment: Annotated[str, typer.Argument(help="owner/name")],
    priority: Annotated[int, typer.Argument(help="1 (first) to 5 (last); the default is 3")],
    shared_hardware: Annotated[
        bool | None,
        typer.Option(
            "--shared-hardware/--own-instances",
            help="Run its predictions on its hardware's shared queue (no instances of its "
            "own), or on its own instances again (the default). Unchanged when not given.",
        ),
    ] = None,
) -> None:
    """Set the priority of DEPLOYMENT's predictions. On shared hardware it orders them among
    everyone's predictions there: lower numbers start first."""
    from replicant.deployments import DeploymentError, set_deployment_priority

    try:
        row = set_deployment_priority(
            _accounts_engine(), deployment, priority, shared_hardware=shared_hardware
        )
    except DeploymentError as err:
        _refuse(err)
    where = "the shared queue of" if row.shared_hardware else "its own instances of"
    print(f"{deployment} has priority {priority} and runs on {where} {row.hardware}")
    if shared_hardware is not None:
        _wake_and_leave(row)


def _wake_and_leave(row: Deployment) -> NoReturn:
    """Wake the deployment's controller (it starts or stops instances now), then end the
    process at once."""
    import asyncio
    import os
    import sys

    from replicant.deployments import wake_controller

    try:
        asyncio.run(wake_controller(get_settings(), row))
    except Exception as err:
        console.print(
            f"[yellow]Its controller was not reached ({type(err).__name__}); it applies the "
            "change at its next check[/yellow]"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal client's native threads can abort a short-lived process while the
    # interpreter tears down (temporalio/sdk-python#300); everything is done: skip it.
    os._exit(0)


def _accounts_engine() -> Engine:
    from replicant.db import init_db, make_engine

    engine = make_engine(get_settings().resolved_database_url)
    init_db(engine)
    return engine


def _refuse(err: Exception) -> NoReturn:
    console.print(f"[red]{err}[/red]")
    raise typer.Exit(1)


@tokens_app.command("create")
def tokens_create(
    account: str,
    name: Annotated[str, typer.Option("--name", help="A label to recognise it by.")] = "default",
) -> None:
    """Create an API token for ACCOUNT and print it (shown once; only its hash is kept)."""
    from replicant.accounts import AccountError, create_token

    try:
        _, token = create_token(_accounts_engine(), account, name)
    except AccountError as err:
        _refuse(err)
    print(token)


@tokens_app.command("list")
def tokens_list(account: str) -> None:
    """List ACCOUNT's tokens: id, name, created, revoked (never the tokens themselves)."""
    from replicant.accounts import AccountError, list_tokens

    try:
        rows = list_tokens(_accounts_engine(), account)
    except AccountError as err:
        _refuse(err)
    print("id\tname\tcreated\trevoked")
    for row in rows:
        revoked = row.revoked_at.isoformat() if row.revoked_at else "-"
        print(f"{row.id}\t{row.name}\t{row.created_at.isoformat()}\t{revoked}")


@tokens_app.command("revoke")
def tokens_revoke(token_id: int) -> None:
    """Revoke a token by its id (from `tokens list`); requests with it get 401 at once."""
    from replicant.accounts import AccountError, revoke_token

    try:
        revoke_token(_accounts_engine(), token_id)
    except AccountError as err:
        _refuse(err)
    print(f"revoked token {token_id}")


@orgs_app.command("create")
def orgs_create(name: str) -> None:
    """Create an organization (give it tokens with `tokens create NAME`)."""
    from replicant.accounts import AccountError, create_organization

    try:
        create_organization(_accounts_engine(), name)
    except AccountError as err:
        _refuse(err)
    print(f"created organization {name}")


@orgs_app.command("add-member")
def orgs_add_member(org: str, user: str) -> None:
    """Make USER a member of ORG: it creates, sees and runs ORG's private models."""
    from replicant.accounts import AccountError, add_member

    try:
        add_member(_accounts_engine(), org, user)
    except AccountError as err:
        _refuse(err)
    print(f"{user} is a member of {org}")


@models_app.command("official")
def models_official(
    model: str,
    off: Annotated[bool, typer.Option("--off", help="Unmark it instead.")] = False,
) -> None:
    """Mark MODEL (owner/name) as official (``is_official``), or unmark it with --off."""
    from replicant.catalog import set_official

    try:
        set_official(_accounts_engine(), model, not off)
    except LookupError as err:
        _refuse(err)
    print(f"{model} is {'not ' if off else ''}official")


@collections_app.command("create")
def collections_create(
    slug: str,
    name: Annotated[str, typer.Option("--name", help="Its title.")],
    description: Annotated[str, typer.Option("--description", help="One line.")] = "",
    full_description: Annotated[
        str | None, typer.Option("--full-description", help="Markdown.")
    ] = None,
) -> None:
    """Create collection SLUG (or change its name and descriptions)."""
    from replicant.collections import CollectionError, create_collection

    try:
        create_collection(_accounts_engine(), slug, name, description, full_description)
    except CollectionError as err:
        _refuse(err)
    print(f"collection {slug}")


@collections_app.command("add")
def collections_add(slug: str, models: list[str]) -> None:
    """Put MODELS (owner/name) in collection SLUG."""
    from replicant.collections import CollectionError, add_models

    try:
        add_models(_accounts_engine(), slug, models)
    except CollectionError as err:
        _refuse(err)
    print(f"added {len(models)} to {slug}")


@collections_app.command("remove")
def collections_remove(slug: str, models: list[str]) -> None:
    """Take MODELS (owner/name) out of collection SLUG."""
    from replicant.collections import CollectionError, remove_models

    try:
        remove_models(_accounts_engine(), slug, models)
    except CollectionError as err:
        _refuse(err)
    print(f"removed {len(models)} from {slug}")


@collections_app.command("delete")
def collections_delete(slug: str) -> None:
    """Delete collection SLUG (its models stay)."""
    from replicant.collections import CollectionError, delete_collection

    try:
        delete_collection(_accounts_engine(), slug)
    except CollectionError as err:
        _refuse(err)
    print(f"deleted {slug}")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="The migration to reach.")] = "head",
) -> None:
    """Apply the migrations to REPLICANT_DATABASE_URL (run once per release)."""
    from replicant.db import current_revision, make_engine, upgrade

    settings = get_settings()
    _logging(settings)
    secure_data_dir(settings)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine, revision, secret_key=settings.ensure_secret_key())
    console.print(f"database at {current_revision(engine)}", highlight=False)
    engine.dispose()


@db_app.command("current")
def db_current() -> None:
    """Print the migration the database is at."""
    from replicant.db import current_revision, head_revision, make_engine

    engine = make_engine(get_settings().resolved_database_url)
    current = current_revision(engine)
    head = head_revision()
    console.print(f"{current} ({'head' if current == head else f'head is {head}'})")
    engine.dispose()


@db_app.command("revision")
def db_revision(
    message: Annotated[str, typer.Option("-m", "--message", help="What the migration does.")],
    rev_id: Annotated[
        str | None, typer.Option("--rev-id", help="Its id (default: a random one).")
    ] = None,
) -> None:
    """Write a new migration with the changes of replicant/tables.py (database at head)."""
    from alembic import command

    from replicant.db import alembic_config, make_engine

    engine = make_engine(get_settings().resolved_database_url)
    with engine.begin() as connection:
        command.revision(
            alembic_config(connection), message=message, autogenerate=True, rev_id=rev_id
        )
    engine.dispose()


if __name__ == "__main__":
    app()
