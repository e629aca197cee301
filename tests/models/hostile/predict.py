"""A hostile model: at import (the schema probe at push) and in predict() it tries to read
what no model may read and to connect where no model may connect, and reports only what it
managed. ``targets.json`` (written by the test) names the paths, ports and markers; an empty
report means the sandbox held.

Given ``other_run`` (and its own run's id, ``own_run``), it instead speaks for that other run
through its own links to the worker (the URLs coglet was started with): a forged webhook and
an output upload, then, the control, an upload for its own run; it reports each answer."""

import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from cog import BasePredictor, Input


def attempts() -> list[str]:
    targets = json.loads(Path(__file__).with_name("targets.json").read_text())
    done = []
    for path in targets["paths"]:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as handle:
                    handle.read(1)
            done.append(f"read {path}")
        except OSError:
            pass
    try:
        with open(__file__, "a"):
            done.append("could change its own code")
    except OSError:
        pass
    for key, value in os.environ.items():
        if key.startswith(tuple(targets["env_prefixes"])) or value in targets["secrets"]:
            done.append(f"saw {key} in its environment")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if any(marker.encode() in environ for marker in targets["markers"]):
            done.append(f"read the environment of process {entry}")
    for host, port in targets["connects"]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect((host, port))
            done.append(f"connected to {host}:{port}")
        except OSError:
            pass
        finally:
            sock.close()
    return done


def speak_for(own_run: str, other_run: str) -> list[str]:
    cmdline = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    upload = cmdline[cmdline.index(b"--upload-url") + 1].decode()
    base = upload.removesuffix("upload/")
    forged = {"id": other_run, "status": "succeeded", "output": "forged"}
    tries = [
        ("webhook for another run", "POST", base + other_run, json.dumps(forged).encode(), ""),
        ("upload for another run", "PUT", upload + "forged.txt", b"forged", other_run),
        ("upload for its own run", "PUT", upload + "own.txt", b"own", own_run),
    ]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    done = []
    for what, method, url, body, run in tries:
        headers = {"Content-Type": "application/json"}
        if run:
            headers = {"Content-Type": "text/plain", "X-Prediction-Id": run}
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with opener.open(request, timeout=10) as answer:
                done.append(f"{what}: {answer.status}")
        except urllib.error.HTTPError as err:
            done.append(f"{what}: {err.code}")
    return done


AT_IMPORT = attempts()


class Predictor(BasePredictor):
    def predict(
        self,
        note: str = Input(default="", description=json.dumps({"at_import": AT_IMPORT})),
        own_run: str = Input(default=""),
        other_run: str = Input(default=""),
    ) -> list[str]:
        if other_run:
            return speak_for(own_run, other_run)
        return attempts()
