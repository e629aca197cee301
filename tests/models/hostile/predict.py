"""A hostile model: at import (the schema probe at push) and in predict() it tries to read
what no model may read and to connect where no model may connect, and reports only what it
managed. ``targets.json`` (written by the test) names the paths, ports and markers; an empty
report means the sandbox held."""

import json
import os
import socket
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


AT_IMPORT = attempts()


class Predictor(BasePredictor):
    def predict(
        self, note: str = Input(default="", description=json.dumps({"at_import": AT_IMPORT}))
    ) -> list[str]:
        return attempts()
