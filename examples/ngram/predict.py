import random
from typing import Iterator, Optional, Union

from cog import BasePredictor, Input, Path

import ngram_model


class Predictor(BasePredictor):
    def setup(self, weights: Optional[Union[str, Path]] = None) -> None:
        """Load trained weights (URL or path) if given, else the bundled corpus."""
        self.model = ngram_model.load(weights)
        print(
            f"loaded order-{self.model.order} model, "
            f"{len(self.model.vocabulary())} distinct words"
        )

    def predict(
        self,
        prompt: str = Input(description="Text to continue", default=""),
        max_tokens: int = Input(
            description="Number of words to generate", default=50, ge=1, le=1000
        ),
        seed: Optional[int] = Input(
            description="Random seed. Leave blank to randomize", default=None
        ),
    ) -> Iterator[str]:
        if seed is None:
            seed = random.randint(0, 2**31 - 1)
        print(f"Using seed: {seed}")
        yield from self.model.generate(prompt, max_tokens, seed)
