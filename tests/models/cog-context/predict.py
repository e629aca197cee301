import json

from cog import BasePredictor, current_scope


class Predictor(BasePredictor):
    def predict(self) -> str:
        return json.dumps(current_scope().context, sort_keys=True)
