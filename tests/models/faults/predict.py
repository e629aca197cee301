import os
import signal
import sys

from cog import BasePredictor, Input


class Predictor(BasePredictor):
    def predict(
        self,
        mode: str = Input(choices=["echo", "exit", "killed", "logs", "output"], default="echo"),
        mb: int = Input(default=1, ge=0, le=200),
    ) -> str:
        if mode == "exit":  # the model process dies mid-prediction
            print("about to exit", flush=True)
            os._exit(3)
        if mode == "killed":  # as the kernel's OOM killer ends a process: SIGKILL
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "logs":  # mb megabytes of log lines
            line = "x" * 1023
            for _ in range(mb * 1024):
                print(line)
            sys.stdout.flush()
            return "logged"
        if mode == "output":  # an output of mb megabytes
            return "y" * (mb * 1024 * 1024)
        return "ok"
