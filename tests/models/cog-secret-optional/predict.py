from cog import BasePredictor, Input, Secret


class Predictor(BasePredictor):
    def predict(
        self,
        prompt: str = Input(description="Text prompt"),
        api_key: Secret = Input(description="Your API key (optional)", default=None),
        api_key_required: Secret = Input(description="Required API key"),
        seed: int = Input(description="Random seed", default=None),
    ) -> str:
        key = "none" if api_key is None else str(len(api_key.get_secret_value()))
        return f"{prompt} key={key} seed={seed}"
