from typing import Optional

import requests
from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def setup(self, weights: Optional[str] = None) -> None:
        # Replicate gives the weights as a URL, as Cog's hello-train expects.
        self.prefix = "hello"
        if weights:
            response = requests.get(str(weights), timeout=60)
            response.raise_for_status()
            self.prefix = response.text

    def predict(self, text: str = Input(description="Who to greet")) -> str:
        return f"{self.prefix} {text}"
