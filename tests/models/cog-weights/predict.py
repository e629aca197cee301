import json
import urllib.request
from pathlib import Path
from typing import Optional

from cog import BasePredictor

TARGETS = ("/src/weights", "/weights/stored", "/srv/models/fetched")


def files_under(target: str) -> dict[str, str]:
    root = Path(target)
    return {
        p.relative_to(root).as_posix(): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def writable(target: str) -> bool:
    try:
        (Path(target) / "new.txt").write_text("x")
    except OSError:
        return False
    return True


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        # The managed weights are in place before setup(), as under Cog.
        self.seen = {target: files_under(target) for target in TARGETS}
        self.trained = None
        if weights:  # a fine-tune's COG_WEIGHTS, beside the managed weights
            with urllib.request.urlopen(str(weights), timeout=60) as response:
                self.trained = response.read().decode()

    def predict(self) -> str:
        return json.dumps(
            {
                "seen": self.seen,
                "writable": [t for t in TARGETS if writable(t)],
                "trained": self.trained,
            },
            sort_keys=True,
        )
