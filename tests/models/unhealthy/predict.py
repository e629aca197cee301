import asyncio

from cog import BasePredictor


class Predictor(BasePredictor):
    async def setup(self) -> None:
        self.healthy = True

    async def predict(self, mode: str = "ok", seconds: float = 0.0) -> str:
        """``sick``: unhealthy from now on; ``seconds``: how long it takes first."""
        await asyncio.sleep(seconds)
        if mode == "sick":
            self.healthy = False
        return mode

    async def healthcheck(self) -> bool:
        return self.healthy
