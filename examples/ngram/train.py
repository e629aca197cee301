import json
import tempfile

from cog import BaseModel, Input, Path

import ngram_model


class TrainingOutput(BaseModel):
    weights: Path


def train(
    text: Path = Input(description="Training corpus, plain text"),
    order: int = Input(
        description="n of the n-gram: 1 = unigram, 2 = bigram, 3 = trigram",
        default=2,
        ge=1,
        le=4,
    ),
) -> TrainingOutput:
    corpus = Path(text).read_text(encoding="utf-8", errors="replace")
    print(f"read {len(corpus)} characters, {len(corpus.split())} words")
    model = ngram_model.NgramModel.from_text(corpus, order)
    contexts = sum(len(table) for table in model.tables)
    print(f"built order-{order} model: {len(model.vocabulary())} words, {contexts} contexts")
    out = Path(tempfile.mkdtemp()) / "weights.json"
    out.write_text(json.dumps(model.to_json()), encoding="utf-8")
    print(f"wrote {out.stat().st_size} bytes of weights")
    return TrainingOutput(weights=out)
