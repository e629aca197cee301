import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        print("Starting slow setup...")
        time.sleep(30)
        print("Slow setup complete.")

    def predict(self, s: str) -> str:
        return "hello " + s
