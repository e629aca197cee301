import os
import sys

from cog import BasePredictor


class Predictor(BasePredictor):
    def predict(self, do_exit: bool = False) -> str:
        if do_exit:
            sys.exit(1)
        return f"still alive in {os.getpid()}"
