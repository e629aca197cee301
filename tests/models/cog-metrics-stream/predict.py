import time

from cog import BasePredictor, ConcatenateIterator, current_scope


class Predictor(BasePredictor):
    def predict(self, tokens: int = 3, interval: float = 0.3) -> ConcatenateIterator[str]:
        for i in range(tokens):
            current_scope().record_metric("tokens", 1, mode="incr")
            print(f"token {i}")
            yield f"t{i} "
            time.sleep(interval)
