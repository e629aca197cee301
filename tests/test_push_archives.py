"""Archives a push refuses: unsafe paths and links, damaged or empty bodies, and archives
over ``max_push_bytes`` packed or unpacked; each refused with nothing left behind."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from replicant.accounts import create_account
from replicant.archives import (
    ArchiveError,
    ArchiveTooLarge,
    LinkOutside,
    model_files,
    pack_model,
    unpack_model,
)
from replicant.settings import Settings
from tests.conftest import LiveStack
from tests.modelkit import (
    COG_YAML,
    leftovers,
    push,
    someone,
    tar_of,
)


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (tar_of([_member("../escaped.py")], {"../escaped.py": b"x"}), "'..'"),
        (tar_of([_member("a/../../escaped.py")], {"a/../../escaped.py": b"x"}), "'..'"),
        (tar_of([_member("/tmp/escaped.py")], {"/tmp/escaped.py": b"x"}), "absolute"),
        (tar_of([_member("cog.yaml", tarfile.SYMTYPE, "/etc/passwd")]), "links"),
        (tar_of([_member("cog.yaml", tarfile.LNKTYPE, "/etc/passwd")]), "links"),
        (b"this is not an archive", "not a .tar.gz"),
        (b"", "no body"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "garbage", "empty"],
)
def test_unsafe_or_damaged_archives_are_refused(
    live: LiveStack, archive: bytes, message: str
) -> None:
    alice = someone(live, "unsafe")
    response = push(live, alice, f"{alice.username}/unsafe", archive, create=True)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["invalid_fields"][0]["field"] == "archive"
    assert message in body["detail"]
    data = live.settings.data_dir.resolve()
    assert not (data / "escaped.py").exists() and not (data / "uploads" / "escaped.py").exists()
    assert leftovers(live) == []


def test_oversized_archives_are_refused(tmp_path: Path) -> None:
    """Limits, on an app of its own with a small ``max_push_bytes`` (no Temporal needed)."""
    settings = Settings(data_dir=tmp_path / "data", max_push_bytes=64 * 1024)
    app = create_app(settings)
    username = "big"
    _, token = create_account(app.state.replicant.engine, username)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"}
    url = f"/v1/models/{username}/big/versions?create=true"
    bomb = tar_of(
        [_member("cog.yaml"), _member("weights.bin")],
        {
            "cog.yaml": COG_YAML.encode(),
            "weights.bin": b"\0" * (1024 * 1024),  # compresses to ~1 kB, unpacks past the limit
        },
    )
    assert len(bomb) < settings.max_push_bytes
    with TestClient(app) as client:
        too_big = client.post(url, content=os.urandom(settings.max_push_bytes + 1), headers=headers)
        assert too_big.status_code == 413
        unpacks_too_big = client.post(url, content=bomb, headers=headers)
        assert unpacks_too_big.status_code == 413
        assert "too large" in unpacks_too_big.json()["detail"]
        assert client.get(f"/v1/models/{username}/big", headers=headers).status_code == 404
    assert list((settings.data_dir / "uploads").iterdir()) == []


def test_unpacking_stops_at_the_byte_limit_and_leaves_the_target_empty(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cog.yaml", COG_YAML)
        zf.writestr("weights.bin", b"\0" * 200_000)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveTooLarge):
        unpack_model(archive, target, max_bytes=100_000)
    assert list(target.iterdir()) == []
    with pytest.raises(ArchiveError, match="links"):
        unpack_model(_symlink_zip(tmp_path), target, max_bytes=100_000)


def _symlink_zip(tmp_path: Path) -> Path:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("cog.yaml")
        info.external_attr = 0o120777 << 16  # a symlink, as `zip --symlinks` stores it
        zf.writestr(info, "/etc/passwd")
    return path


# ---- symbolic links on the pusher's side --------------------------------------------------


def model_with_link(tmp_path: Path, name: str, target: str | Path) -> Path:
    src = tmp_path / "model"
    (src / "lib").mkdir(parents=True)
    (src / "cog.yaml").write_text(COG_YAML)
    (src / "predict.py").write_text("# the predictor\n")
    (src / "lib" / "helper.py").write_text("HELPER = 1\n")
    (tmp_path / "private").mkdir(exist_ok=True)
    (tmp_path / "private" / "id_rsa").write_text("-----BEGIN PRIVATE KEY-----\n")
    link = src / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return src


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("key.txt", "/etc/hostname"),  # an absolute link to a file
        ("lib/key.txt", "../../private/id_rsa"),  # a relative one, climbing out
        ("secrets", "../private"),  # a directory outside
        ("gone.txt", "/nonexistent/file"),  # a dangling one, outside
    ],
)
def test_push_refuses_links_that_point_out_of_the_model_directory(
    tmp_path: Path, name: str, target: str
) -> None:
    src = model_with_link(tmp_path, name, target)
    with pytest.raises(LinkOutside, match=f"{name} is a symbolic link to .*outside the model"):
        pack_model(src, io.BytesIO())


def test_links_inside_the_model_directory_are_packed_as_their_files(tmp_path: Path) -> None:
    src = model_with_link(tmp_path, "alias.py", "lib/helper.py")
    (src / ".venv").mkdir()
    (src / ".venv" / "python").symlink_to("/usr/bin/python3")  # skipped, as .venv is
    assert [p.relative_to(src).as_posix() for p in model_files(src)] == [
        "alias.py",
        "cog.yaml",
        "lib/helper.py",
        "predict.py",
    ]
    buffer = io.BytesIO()
    pack_model(src, buffer)
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r:gz") as tar:
        alias = tar.getmember("alias.py")
        assert alias.isfile()
        extracted = tar.extractfile(alias)
        assert extracted is not None and extracted.read() == b"HELPER = 1\n"


def test_replicant_push_names_the_link_and_uploads_nothing(tmp_path: Path) -> None:
    src = model_with_link(tmp_path, "data/key.txt", tmp_path / "private" / "id_rsa")
    done = subprocess.run(
        [sys.executable, "-m", "replicant.cli", "push", str(src), "someone/model"]
        + ["--url", "http://127.0.0.1:9", "--token", "r8_not-used"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "data/key.txt is a symbolic link to" in done.stdout
    assert "outside the model directory" in done.stdout
    assert "Uploading" not in done.stdout and "Traceback" not in done.stdout + done.stderr
