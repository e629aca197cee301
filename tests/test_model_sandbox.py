"""The model sandbox (replicant/sandbox.py, docs/hardening.md): model code pushed by an
ordinary account reads none of the installation's files, secrets or other processes and
connects to none of its services, at push (the schema probe) and in a prediction; a machine
that cannot sandbox refuses model code unless the operator allows it unsandboxed; pushes
can be limited to listed accounts and organizations."""

from __future__ import annotations

import asyncio
import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlmodel import Session

from api.errors import ProblemError
from api.push import check_pusher
from replicant.accounts import add_member, create_account, create_organization
from replicant.cogmodel import CogConfig, PredictorError, load_cog_config, run_probe
from replicant.devstack import free_port
from replicant.egress import PROXY_PORT, EgressProxy
from replicant.envs import ensure_env
from replicant.runner import RunnerSpec
from replicant.sandbox import SandboxConfig, machine_sandbox, status_line
from replicant.settings import get_settings
from tests.conftest import LiveStack
from tests.modelkit import (
    COG_YAML,
    HOSTILE,
    PID_MODEL,
    hostile_model,
    pack,
    predict,
    pushed,
    someone,
    write_model,
)
from tests.runnerkit import spec, write_models
from tests.test_envs import make_wheel
from workers.runners import BootError, PoolConfig, RunnerPool


def private_address() -> str:
    """An address of this machine that is not loopback (a private one here), else
    127.0.0.2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address: str = probe.getsockname()[0]
        except OSError:
            return "127.0.0.2"
    return address if not address.startswith("127.") else "127.0.0.2"


@pytest.fixture
def listener() -> Iterator[tuple[str, int]]:
    """A TCP server on every address of this machine: what a model must not reach."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield private_address(), server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_the_hostile_model_reaches_all_of_it_outside_a_sandbox(
    tmp_path: Path, live: LiveStack, listener: tuple[str, int]
) -> None:
    # The control: the same attempts, run here in the test's process, do succeed.
    src = hostile_model(tmp_path, live, listener)
    module_spec = importlib.util.spec_from_file_location("hostile_control", src / "predict.py")
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    found = module.AT_IMPORT
    data = live.settings.data_dir.resolve()
    assert f"read {data / 'secret-key'}" in found
    assert f"connected to {listener[0]}:{listener[1]}" in found
    assert f"connected to 127.0.0.1:{urlsplit(live.url).port}" in found
    assert any(line.startswith("read the environment of process") for line in found)


def test_a_hostile_model_pushed_by_an_ordinary_account_reaches_nothing_and_runs(
    tmp_path: Path, live: LiveStack, listener: tuple[str, int]
) -> None:
    who = someone(live, "hostile")
    src = hostile_model(tmp_path, live, listener)
    ref = f"{who.username}/hostile"
    pushed(live, who, ref, src, create=True, visibility="private")

    with who.client(live) as client:
        version = client.get(f"/v1/models/{ref}").json()["latest_version"]
        note = version["openapi_schema"]["components"]["schemas"]["Input"]["properties"]["note"]
        # At push: the schema probe imported the module, whose attempts all failed.
        assert json.loads(note["description"]) == {"at_import": []}
        response = predict(client, ref, {})
    prediction = response.json()
    # The prediction ran, and every read and connect in it failed.
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == []


@pytest.mark.integration  # starts coglet processes itself
def test_a_machine_that_cannot_sandbox_refuses_model_code_unless_unsandboxed_is_set(
    tmp_path: Path,
) -> None:
    cannot = SandboxConfig(bwrap=None)
    assert "mode=refused" in status_line(cannot)
    (tmp_path / "models").mkdir()
    models = write_models(tmp_path / "models")
    hello = spec(models, "hello")
    config = load_cog_config(models / "hello")
    with pytest.raises(PredictorError, match="REPLICANT_MODEL_UNSANDBOXED"):
        run_probe(models / "hello", Path(sys.executable), config, cannot)

    async def run(sandbox: SandboxConfig) -> Any:
        pool = RunnerPool(PoolConfig(max_warm=1, boot_timeout=60, sandbox=sandbox))
        await pool.start()
        try:
            return await pool.predict(hello, f"p-{sandbox.unsandboxed}", {"name": "x"})
        finally:
            await pool.close()

    with pytest.raises(BootError, match="REPLICANT_MODEL_UNSANDBOXED"):
        asyncio.run(run(cannot))
    allowed = SandboxConfig(bwrap=None, unsandboxed=True)
    assert "mode=unsandboxed" in status_line(allowed)
    assert asyncio.run(run(allowed)).output == "hello x"
    assert "predict" in run_probe(models / "hello", Path(sys.executable), config, allowed)


def test_the_probe_sees_no_environment_of_the_process_that_pushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICANT_API_TOKEN", "r8_operator-canary")
    model = write_model(
        tmp_path / "envprobe",
        {
            "cog.yaml": COG_YAML,
            "predict.py": "import json, os\n"
            "from cog import BasePredictor, Input\n"
            "SEEN = sorted(k for k, v in os.environ.items() if 'canary' in v or 'REP' in k)\n"
            "class Predictor(BasePredictor):\n"
            "    def predict(self, x: str = Input(description=json.dumps(SEEN))) -> str:\n"
            "        return x\n",
        },
    )
    config = load_cog_config(model)
    described = run_probe(model, Path(sys.executable), config, machine_sandbox())
    assert json.loads(described["predict"]["input"]["properties"]["x"]["description"]) == []


def test_pushes_are_limited_to_listed_accounts_and_organization_members(
    live: LiveStack,
) -> None:
    suffix = os.urandom(3).hex()
    member, _ = create_account(live.engine, f"member-{suffix}")
    listed, _ = create_account(live.engine, f"listed-{suffix}")
    stranger, _ = create_account(live.engine, f"stranger-{suffix}")
    create_organization(live.engine, f"team-{suffix}")
    add_member(live.engine, f"team-{suffix}", member.username)
    settings = live.settings.model_copy(
        update={"push_accounts": [listed.username], "push_organizations": [f"team-{suffix}"]}
    )
    with Session(live.engine) as session:
        check_pusher(session, member, settings)
        check_pusher(session, listed, settings)
        check_pusher(session, stranger, live.settings)  # no lists: everyone
        with pytest.raises(ProblemError) as refused:
            check_pusher(session, stranger, settings)
    assert refused.value.status == 403
    assert "may not push models" in refused.value.detail


def test_a_push_by_an_unlisted_account_is_refused_with_403_problem_json(
    live: LiveStack, tmp_path: Path
) -> None:
    listed, stranger = someone(live, "listed"), someone(live, "stranger")
    # An API process of its own with a push list; the stack's API stays open to everyone.
    port = free_port()
    url = live.stack.start_api(
        "api-pushers", port, env={"REPLICANT_PUSH_ACCOUNTS": json.dumps([listed.username])}
    )
    try:
        body = pack(write_model(tmp_path / "m", {"cog.yaml": COG_YAML, "predict.py": PID_MODEL}))

        def push_as(who: Any) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/models/{who.username}/m/versions",
                params={"create": "true"},
                content=body,
                headers={
                    "Authorization": f"Bearer {who.token}",
                    "Content-Type": "application/gzip",
                },
                timeout=300,
            )

        refused = push_as(stranger)
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "may not push models" in refused.json()["detail"]
        assert push_as(listed).status_code == 201
    finally:
        live.stack.stop("api-pushers")


FETCHER = """
import os
import socket
import urllib.error
import urllib.request

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, host: str, port: int) -> list[str]:
        done = []
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/", timeout=10) as answer:
                done.append(f"fetched through the proxy: {answer.status}")
        except urllib.error.HTTPError as err:
            done.append(f"proxy answered {err.code}")
        except OSError as err:
            done.append(f"no fetch: {err}")
        with socket.socket() as sock:
            sock.settimeout(2)
            try:
                sock.connect((host, port))
                done.append("connected directly")
            except OSError:
                pass
        done.append("proxy " + os.environ.get("HTTPS_PROXY", "unset"))
        return done
"""


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.integration  # starts coglet processes itself
def test_public_egress_goes_through_a_proxy_that_refuses_private_addresses(
    tmp_path: Path, listener: tuple[str, int]
) -> None:
    model = write_model(tmp_path / "fetcher", {"cog.yaml": COG_YAML, "predict.py": FETCHER})
    fetcher = RunnerSpec(
        key="fetcher",
        model_dir=model,
        python=Path(sys.executable),
        predict_ref="predict.py:Predictor",
    )
    public = replace(machine_sandbox(), egress="public")

    async def run() -> Any:
        pool = RunnerPool(PoolConfig(max_warm=1, boot_timeout=60, sandbox=public))
        await pool.start()
        try:
            host, port = listener
            return await pool.predict(fetcher, "p-egress", {"host": host, "port": port})
        finally:
            await pool.close()

    result = asyncio.run(run())
    assert result.status == "succeeded", (result.error, result.logs)
    # The private address: refused by the proxy (403), and no direct route at all.
    assert result.output == ["proxy answered 403", f"proxy http://127.0.0.1:{PROXY_PORT}"]


@pytest.mark.integration  # starts coglet processes itself
def test_a_model_process_cannot_report_for_a_run_on_another_process(tmp_path: Path) -> None:
    src = tmp_path / "hostile"
    shutil.copytree(HOSTILE, src)
    nothing = {"paths": [], "env_prefixes": [], "secrets": [], "markers": [], "connects": []}
    (src / "targets.json").write_text(json.dumps(nothing))
    hostile = RunnerSpec(
        key="hostile",
        model_dir=src,
        python=Path(sys.executable),
        predict_ref="predict.py:Predictor",
    )
    (tmp_path / "models").mkdir()
    victim = spec(write_models(tmp_path / "models"), "whoami")
    uploaded: list[tuple[str, bytes]] = []

    async def store(prediction_id: str, name: str, _: str | None, body: Any) -> str:
        uploaded.append((prediction_id, b"".join([chunk async for chunk in body])))
        return f"http://store.invalid/{prediction_id}/{name}"

    async def updated(_: Any) -> None:
        pass

    async def run() -> tuple[Any, Any]:
        pool = RunnerPool(PoolConfig(max_warm=2, boot_timeout=60, cancel_grace=1.0, upload=store))
        await pool.start()
        running = asyncio.Event()

        async def booted() -> None:
            running.set()

        try:
            # The other run is on its own process, listening for webhooks, held until canceled.
            other = asyncio.create_task(
                pool.predict(victim, "p-other", {"hold": 120}, on_update=updated, on_booted=booted)
            )
            await running.wait()
            attack = await pool.predict(
                hostile, "p-hostile", {"own_run": "p-hostile", "other_run": "p-other"}
            )
            await pool.cancel("p-other")
            return attack, await other
        finally:
            await pool.close()

    attack, other = asyncio.run(run())
    assert attack.status == "succeeded", (attack.error, attack.logs)
    assert attack.output == [
        "webhook for another run: 404",
        "upload for another run: 404",
        # The control: the same links, for its own run, are answered.
        "upload for its own run: 201",
    ]
    assert uploaded == [("p-hostile", b"own")]
    assert other.status == "canceled" and other.output != "forged"


def test_the_egress_proxy_forwards_to_addresses_it_allows(tmp_path: Path) -> None:
    # The proxy's own mechanics, with loopback allowed in place of a public address (this
    # machine may have no route to the internet): plain HTTP and CONNECT both get through.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    async def fetch() -> tuple[bytes, bytes]:
        proxy = EgressProxy(tmp_path / "egress.sock", allowed=lambda a: a == "127.0.0.1")
        await proxy.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(proxy.path))
            writer.write(f"GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: a\r\n\r\n".encode())
            plain = await reader.read()
            writer.close()
            reader, writer = await asyncio.open_unix_connection(str(proxy.path))
            writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"GET / HTTP/1.0\r\n\r\n")
            tunneled = await reader.read()
            writer.close()
            return plain, tunneled
        finally:
            await proxy.close()

    try:
        plain, tunneled = asyncio.run(fetch())
    finally:
        server.shutdown()
    assert plain.startswith(b"HTTP/1.0 200") and plain.endswith(b"hello")
    assert tunneled.startswith(b"HTTP/1.0 200") and tunneled.endswith(b"hello")


@pytest.mark.integration  # runs pip in the sandbox
def test_an_environment_builds_in_the_sandbox_behind_the_egress_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPLICANT_MODEL_BUILD_EGRESS", "public")
    get_settings.cache_clear()
    try:
        assert machine_sandbox().build_egress == "public"
        wheel = make_wheel(tmp_path)
        config = CogConfig(predict_ref="predict.py:Predictor", python_packages=[str(wheel)])
        python = ensure_env(config, tmp_path / "envs")
    finally:
        get_settings.cache_clear()
    probe = subprocess.run(
        [str(python), "-c", "import replicant_test_pkg as p; print(p.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.split() == ["42"]
    # pip ran as the model's uid; the built environment is the worker's again.
    env = python.parent.parent
    assert {p.stat().st_uid for p in env.rglob("*") if not p.is_symlink()} == {os.geteuid()}
