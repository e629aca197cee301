import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        # A model that takes a while to load, like one reading large weights.
        time.sleep(4)

    def predict(self, text: str = "x") -> str:
        return text
