from importlib.metadata import version

from cog import BasePredictor
from local_pkg import MESSAGE as TAR_MESSAGE
from local_wheel_pkg import MESSAGE as WHEEL_MESSAGE
from local_zip_pkg import MESSAGE as ZIP_MESSAGE


class Predictor(BasePredictor):
    def predict(self) -> str:
        return (
            f"{TAR_MESSAGE} {version('local-pkg')}; "
            f"{ZIP_MESSAGE} {version('local-zip-pkg')}; "
            f"{WHEEL_MESSAGE} {version('local-wheel-pkg')}"
        )
