class Trainer:
    def setup(self) -> None:
        print("Trainer is setting up.")
        self.prefix = "hello train"

    def train(self, s: str) -> str:
        print("Trainer.train called.")
        return f"{self.prefix} {s}"
