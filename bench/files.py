"""Files API throughput and memory: upload and download a 100 MB file through the API.

Starts the API alone (no Temporal needed) on a scratch data dir with the local object store,
uploads a 100 MB file as multipart (the official clients' way), downloads it through its
signed URL, and prints MB/s for each plus the API process's peak RSS growth (VmHWM after the
transfers minus VmRSS before them; goal: under 64 MB). Run: ``.venv/bin/python bench/files.py``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replicant.accounts import create_account  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402
from replicant.devstack import free_port, settings_env, wait_for_port  # noqa: E402
from replicant.settings import Settings  # noqa: E402

SIZE = 100 * 1024 * 1024
CHUNK = 1024 * 1024


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data / "data", api_port=free_port(), log_level="WARNING")
        engine = make_engine(settings.resolved_database_url)
        init_db(engine)
        _, token = create_account(engine, "bench")
        engine.dispose()
        source = data / "big.bin"
        digest = hashlib.sha256()
        with source.open("wb") as f:
            block = os.urandom(CHUNK)
            for i in range(SIZE // CHUNK):
                chunk = block[i % 7 :] + block[: i % 7]  # not all blocks alike
                digest.update(chunk)
                f.write(chunk)
        api = subprocess.Popen(
            [sys.executable, "-m", "replicant.cli", "api"],
            env=settings_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(settings.api_port, api)
            url = settings.resolved_public_url
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
                client.get("/v1/files")  # warm up: imports, store, database
                baseline = memory_kb(api.pid, "VmRSS")
                started = time.perf_counter()
                with source.open("rb") as f:
                    response = client.post(
                        "/v1/files",
                        files={"content": ("big.bin", f, "application/octet-stream")},
                    )
                upload_s = time.perf_counter() - started
                response.raise_for_status()
                body = response.json()
                assert body["checksums"]["sha256"] == digest.hexdigest(), "checksum mismatch"
                started = time.perf_counter()
                received = hashlib.sha256()
                with httpx.stream("GET", body["urls"]["download"], timeout=300) as download:
                    download.raise_for_status()
                    for chunk in download.iter_bytes(CHUNK):
                        received.update(chunk)
                download_s = time.perf_counter() - started
                assert received.hexdigest() == digest.hexdigest(), "download differs"
                peak = memory_kb(api.pid, "VmHWM")
        finally:
            api.terminate()
            api.wait(timeout=10)
    mb = SIZE / (1024 * 1024)
    growth = (peak - baseline) / 1024
    print(f"file size          {mb:.0f} MB")
    print(f"upload             {mb / upload_s:8.1f} MB/s  ({upload_s:.2f} s)")
    print(f"download           {mb / download_s:8.1f} MB/s  ({download_s:.2f} s)")
    print(f"API RSS growth     {growth:8.1f} MB    (goal < 64 MB)")
    print(f"API RSS before     {baseline / 1024:8.1f} MB")


if __name__ == "__main__":
    main()
