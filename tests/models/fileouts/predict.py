import os
import tempfile
from typing import Iterator, Optional

from cog import BasePredictor, Input, Path


class Predictor(BasePredictor):
    def predict(
        self,
        count: int = Input(description="How many files", default=2, ge=1, le=10),
        document: Optional[Path] = Input(
            description="A file whose size each output reports", default=None
        ),
    ) -> Iterator[Path]:
        size = os.path.getsize(document) if document is not None else -1
        for i in range(count):
            out = Path(tempfile.mkdtemp()) / "part.txt"
            out.write_text(f"part {i} of {count}; input size {size}\n")
            yield out
