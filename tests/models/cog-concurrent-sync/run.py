import cog
from cog import BaseRunner


class Runner(BaseRunner):
    @cog.concurrent(max=4)
    def run(self, s: str) -> str:
        return s
