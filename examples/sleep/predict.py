import math
import time

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(
        self,
        seconds: float = Input(
            description="How long to sleep, in seconds", default=1.0, ge=0, le=3600
        ),
    ) -> str:
        whole = math.floor(seconds)
        for i in range(1, whole + 1):
            time.sleep(1)
            print(f"slept {i}s", flush=True)
        time.sleep(seconds - whole)
        return f"slept for {seconds:g} seconds"
