from typing import List, Optional

from cog import BasePredictor, File


class Predictor(BasePredictor):
    def predict(self, file: File, files: List[File], maybe: Optional[File] = None) -> str:
        parts = [file.read().decode()]
        parts += [f.read().decode() for f in files]
        parts.append(maybe.read().decode() if maybe is not None else "none")
        return "|".join(parts)
