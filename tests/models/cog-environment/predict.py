import os

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.at_setup = os.environ.get("TEST_VAR")

    def predict(self) -> dict:
        return {
            "setup": self.at_setup,
            "test_var": os.environ.get("TEST_VAR"),
            "empty_var": os.environ.get("EMPTY_VAR"),
        }
