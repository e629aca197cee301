from cog import BasePredictor


class HealthChecked(BasePredictor):
    """A predictor that reports itself unhealthy once a prediction made it so."""

    healthy = True

    def healthcheck(self) -> bool:
        return self.healthy
