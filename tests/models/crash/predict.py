from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(self, message: str = Input(default="boom")) -> str:
        print("about to fail", flush=True)
        raise ValueError(message)
