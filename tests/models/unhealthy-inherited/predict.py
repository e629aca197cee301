import os

from base import HealthChecked


class Predictor(HealthChecked):
    def setup(self) -> None:
        self.healthy = True

    def predict(self, mode: str = "ok") -> str:
        """``sick``: unhealthy from now on. The output names the process that ran it."""
        if mode == "sick":
            self.healthy = False
        return f"{mode} {os.getpid()}"
