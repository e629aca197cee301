import asyncio
from typing import AsyncIterator

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    async def setup(self) -> None:
        self.lock = asyncio.Lock()

    async def predict(
        self,
        name: str = Input(description="Who to greet"),
        chunks: int = Input(description="Pieces of the greeting", default=3, ge=1, le=20),
    ) -> AsyncIterator[str]:
        for i in range(chunks):
            await asyncio.sleep(0.01)
            yield f"{name}-{i}"
