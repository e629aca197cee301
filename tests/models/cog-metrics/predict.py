from cog import BasePredictor, current_scope, emit_metric


class Predictor(BasePredictor):
    def predict(self, fail: bool = False) -> str:
        scope = current_scope()
        scope.record_metric("temperature", 0.7)
        scope.record_metric("token_count", 1, mode="incr")
        scope.record_metric("token_count", 1, mode="incr")
        scope.record_metric("logprobs", -1.5, mode="append")
        scope.record_metric("logprobs", -0.5, mode="append")
        scope.record_metric("timing.preprocess", 0.25)
        scope.metrics["model_name"] = "metrics-test"
        emit_metric("legacy", 3)
        if fail:
            raise ValueError("failed after recording")
        return "done"
