import time
from typing import Iterator

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(
        self,
        tokens: int = Input(default=5, ge=1, le=1000),
        interval: float = Input(default=0.3, ge=0, le=10),
        fail_after: int = Input(default=-1),
    ) -> Iterator[str]:
        for i in range(tokens):
            if i == fail_after:
                raise RuntimeError(f"gave up after {i} tokens")
            time.sleep(interval)
            print(f"token {i}", flush=True)
            yield f"t{i} "
