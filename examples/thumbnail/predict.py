import tempfile

from cog import BasePredictor, Input, Path
from PIL import Image


class Predictor(BasePredictor):
    def predict(
        self,
        image: Path = Input(description="Image to shrink"),
        width: int = Input(
            description="Width of the thumbnail in pixels", default=128, ge=1, le=4096
        ),
    ) -> Path:
        with Image.open(image) as img:
            height = max(1, round(img.height * width / img.width))
            thumb = img.convert("RGBA").resize((width, height), Image.LANCZOS)
        out = Path(tempfile.mkdtemp()) / "thumbnail.png"
        thumb.save(out, format="PNG")
        return out
