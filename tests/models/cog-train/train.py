from cog import BaseModel, Input, Path


class TrainingOutput(BaseModel):
    weights: Path


def train(prefix: str = Input(description="The greeting to learn")) -> TrainingOutput:
    out = Path("weights.txt")
    out.write_text(prefix)
    return TrainingOutput(weights=out)
