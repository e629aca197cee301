from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(
        self,
        name: str = Input(description="User name", accept="text/plain"),
    ) -> str:
        return f"hello {name}"
