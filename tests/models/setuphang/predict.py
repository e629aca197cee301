import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        time.sleep(3600)  # never finishes loading

    def predict(self, text: str = "x") -> str:
        return text
