import tempfile

from cog import BasePredictor, Input, Path
from PIL import Image, ImageFilter


class Predictor(BasePredictor):
    def predict(
        self,
        image: Path = Input(description="Input image"),
        blur: float = Input(description="Blur radius", default=5, ge=0, le=100),
    ) -> Path:
        img = Image.open(str(image)).convert("RGB")
        if blur:
            img = img.filter(ImageFilter.BoxBlur(blur))
        out_path = Path(tempfile.mkdtemp()) / "out.png"
        img.save(str(out_path))
        return out_path
