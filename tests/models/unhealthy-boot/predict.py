from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        pass

    def predict(self) -> str:
        return "never"

    def healthcheck(self) -> bool:
        raise RuntimeError("the GPU is gone")
