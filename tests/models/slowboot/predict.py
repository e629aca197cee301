import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        # A model that takes a while to load, like one reading large weights: long enough
        # that a test sees it booting and cancels it there.
        time.sleep(15)

    def predict(self, text: str = "x") -> str:
        return text
