import sys
from typing import Iterator

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(
        self,
        chunks: int = Input(default=10, ge=1, le=100),
        mb: int = Input(default=10, ge=0, le=100),
    ) -> Iterator[str]:
        """``chunks`` outputs, each after ``mb`` megabytes of log lines."""
        line = "x" * 1023
        for i in range(chunks):
            for _ in range(mb * 1024):
                print(line)
            sys.stdout.flush()
            yield f"chunk {i}"
