"""Helpers of the model tests: accounts, packing and pushing models, the rows they leave."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import replicate
from sqlmodel import Session, select

from replicant.accounts import create_account
from replicant.archives import pack_model
from replicant.tables import Model
from tests.conftest import LiveStack

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# A model that tries to reach every file, secret and service of the installation
# (tests/test_model_sandbox.py; its targets are written by ``hostile_model``).
HOSTILE = Path(__file__).resolve().parent / "models" / "hostile"
COG_YAML = 'build:\n  python_version: "3.11"\npredict: "predict.py:Predictor"\n'
# Answers a number of its own per model process (pids repeat across sandboxes).
PID_MODEL = (
    "import os\n\n"
    "from cog import BasePredictor\n\n"
    "PROCESS = int.from_bytes(os.urandom(4), 'big')\n\n\n"
    "class Predictor(BasePredictor):\n"
    "    def predict(self) -> int:\n"
    "        return PROCESS\n"
)


@dataclass
class Who:
    username: str
    token: str

    def client(self, live: LiveStack) -> httpx.Client:
        return live.client(self.token)

    def official(self, live: LiveStack) -> replicate.Client:
        return replicate.Client(api_token=self.token, base_url=live.url)


def someone(live: LiveStack, prefix: str) -> Who:
    username = f"{prefix}-{os.urandom(3).hex()}"
    _, token = create_account(live.engine, username)
    return Who(username, token)


def pack(src: Path) -> bytes:
    buffer = io.BytesIO()
    pack_model(src, buffer)
    return buffer.getvalue()


def write_model(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def tar_of(entries: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def push(live: LiveStack, who: Who, ref: str, src: Path | bytes, **params: Any) -> httpx.Response:
    body = pack(src) if isinstance(src, Path) else src
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    return httpx.post(
        f"{live.url}/v1/models/{ref}/versions",
        content=body,
        params=query,
        headers={"Authorization": f"Bearer {who.token}", "Content-Type": "application/gzip"},
        timeout=300,
    )


def pushed(live: LiveStack, who: Who, ref: str, src: Path | bytes, **params: Any) -> str:
    response = push(live, who, ref, src, **params)
    assert response.status_code == 201, response.text
    version: str = response.json()["id"]
    return version


def leftovers(live: LiveStack) -> list[str]:
    """Scratch and staging directories: a finished push, good or bad, leaves none."""
    data = live.settings.data_dir.resolve()
    found = [*(data / "versions").glob(".staging-*")]
    if (data / "uploads").exists():
        found += [*(data / "uploads").iterdir()]
    return sorted(p.name for p in found)


def version_dirs(live: LiveStack) -> set[str]:
    return {p.name for p in (live.settings.data_dir.resolve() / "versions").iterdir()}


def predict(client: httpx.Client, ref: str, input: dict[str, Any]) -> httpx.Response:
    return client.post(
        f"/v1/models/{ref}/predictions", json={"input": input}, headers={"Prefer": "wait"}
    )


def model_row(live: LiveStack, ref: str) -> Model:
    owner, name = ref.split("/")
    with Session(live.engine) as session:
        model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).one()
    return model


def hostile_model(root: Path, live: LiveStack, listener: tuple[str, int]) -> Path:
    """The hostile model with its targets: this installation's files, secrets and ports."""
    src = root / "hostile"
    shutil.copytree(HOSTILE, src)
    data = live.settings.data_dir.resolve()
    others = sorted(version_dirs(live))
    temporal = live.settings.resolved_temporal_address.rpartition(":")[2]
    api = urlsplit(live.url).port
    targets: dict[str, Any] = {
        "paths": [
            str(data),
            str(data / "replicant.db"),
            str(data / "secret-key"),
            str(data / "versions"),
            *(str(data / "versions" / name) for name in others[:1]),
            str(Path(__file__).resolve().parent),
        ],
        "env_prefixes": [
            "REPLICANT_API_TOKEN",
            "REPLICANT_DATABASE",
            "REPLICANT_S3",
            "REPLICANT_REDIS",
            "REPLICANT_DATA_DIR",
            "REPLICANT_TEMPORAL",
            "AWS_",
        ],
        "secrets": [live.token],
        # The worker's own processes have its HOME; a sandboxed model's is /tmp.
        "markers": [live.token, f"HOME={os.environ.get('HOME', '/root')}"],
        "connects": [
            ["127.0.0.1", int(temporal)],
            ["127.0.0.1", 5432],
            ["127.0.0.1", 6379],
            ["127.0.0.1", api],
            [listener[0], listener[1]],
        ],
    }
    (src / "targets.json").write_text(json.dumps(targets))
    return src
