import urllib.request
from typing import Optional

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        self.weights = None
        if weights:
            with urllib.request.urlopen(str(weights), timeout=60) as answer:
                self.weights = answer.read().decode()

    def predict(self, s: str) -> str:
        return f"{self.weights or 'no weights'}; {s}"
