import asyncio

import cog
from cog import BaseRunner, Input


class Runner(BaseRunner):
    async def setup(self) -> None:
        self.running = 0
        self.peak = 0

    @cog.concurrent(max=3)
    async def run(self, together: int = Input(description="Runs to wait for", default=1)) -> int:
        """Waits (up to 60 s) until ``together`` runs are in this process at once; the most
        that were."""
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            for _ in range(6000):
                if self.peak >= together:
                    break
                await asyncio.sleep(0.01)
        finally:
            self.running -= 1
        return self.peak
