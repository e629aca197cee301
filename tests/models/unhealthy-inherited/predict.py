import uuid

from base import HealthChecked


class Predictor(HealthChecked):
    def setup(self) -> None:
        self.healthy = True
        self.process = uuid.uuid4().hex  # each process its own name (pids repeat in sandboxes)

    def predict(self, mode: str = "ok") -> str:
        """``sick``: unhealthy from now on. The output names the process that ran it."""
        if mode == "sick":
            self.healthy = False
        return f"{mode} {self.process}"
