from cog import BaseRunner, ConcatenateIterator, Input


class Runner(BaseRunner):
    def run(
        self,
        prompt: str = Input(description="Words to repeat"),
        repeats: int = Input(description="How many times", default=3, ge=1, le=50),
    ) -> ConcatenateIterator[str]:
        for i in range(repeats):
            yield f"{prompt}{i} "
