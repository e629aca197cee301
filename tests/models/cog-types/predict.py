import os
import platform
from typing import Optional

from cog import BaseModel, BasePredictor, Input, Path, Secret


class Output(BaseModel):
    python: str
    threads: Optional[str]
    count: int
    ratio: float
    flag: bool
    color: str
    note: Optional[str]
    words: list[str]
    numbers: list[int]
    sizes: list[int]
    echo: Path
    token_length: Optional[int]


class Predictor(BasePredictor):
    def predict(
        self,
        words: list[str] = Input(description="Some words"),
        numbers: list[int] = Input(description="Some numbers"),
        files: list[Path] = Input(description="Some files"),
        count: int = Input(description="A count", default=2, ge=0, le=10),
        ratio: float = Input(description="A ratio", default=0.5),
        flag: bool = Input(description="A flag", default=False),
        color: str = Input(description="A color", default="red", choices=["red", "green"]),
        note: Optional[str] = Input(description="An optional note", default=None),
        token: Secret = Input(description="A secret", default=None),
    ) -> Output:
        sizes = [len(p.read_bytes()) for p in files]
        echo = Path("echo.txt")
        echo.write_text(" ".join(words))
        return Output(
            python=platform.python_version(),
            threads=os.environ.get("REPLICANT_CPU_THREADS"),
            count=count,
            ratio=ratio,
            flag=flag,
            color=color,
            note=note,
            words=words,
            numbers=numbers,
            sizes=sizes,
            echo=echo,
            token_length=len(token.get_secret_value()) if token is not None else None,
        )
