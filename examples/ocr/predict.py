# Heavy imports live in setup(): the schema is read without them while the env builds.
import os
from typing import Any

from cog import BaseModel, BasePredictor, Input, Path


class Output(BaseModel):
    text: str
    # Each {text, confidence, box}: box is four [x, y] corners (Cog has no list of models).
    lines: list[dict[str, Any]]


class Predictor(BasePredictor):
    def setup(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        threads = int(os.environ.get("REPLICANT_CPU_THREADS", "1"))
        # "max" caps the long side at 960: the default upscales small images (20x slower).
        self.engine = RapidOCR(
            det_limit_type="max",
            det_limit_side_len=960,
            intra_op_num_threads=threads,
            inter_op_num_threads=1,
        )

    def predict(self, image: Path = Input(description="Image with text")) -> Output:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as opened:
                opened.verify()
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            # RapidOCR would name the staged file's temporary path, not the input.
            raise ValueError("image: not an image this model can read (PNG, JPEG, ...)") from err
        result, _elapsed = self.engine(str(image))
        lines = [
            {
                "text": str(text),
                "confidence": float(score),
                "box": [[float(x), float(y)] for x, y in box],
            }
            for box, text, score in result or []
        ]
        return Output(text="\n".join(line["text"] for line in lines), lines=lines)
