import time

from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        self.healthy = True

    def predict(self, mode: str = "ok", seconds: float = 0.0) -> str:
        """``sick``: unhealthy from now on (after ``seconds``)."""
        time.sleep(seconds)
        if mode == "sick":
            self.healthy = False
        return mode

    async def healthcheck(self) -> bool:
        return self.healthy
