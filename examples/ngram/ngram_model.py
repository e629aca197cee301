"""A word-level n-gram language model: build from text, save/load as JSON, generate.

Shared by predict.py and train.py. Standard library only.
"""

import json
import random
import re
import urllib.parse
import urllib.request
from collections import defaultdict
from os import PathLike
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

FORMAT = "replicant-ngram"
VERSION = 1
DEFAULT_CORPUS = Path(__file__).with_name("corpus.txt")
SENTENCE_END = re.compile(r"[.!?]['\"]?$")

# tables[k] maps a context of k words (joined by spaces) to {next word: count}.
Tables = List[Dict[str, Dict[str, int]]]


class NgramModel:
    def __init__(self, order: int, tables: Tables, starts: Dict[str, int]) -> None:
        if not 1 <= order <= len(tables):
            raise ValueError(f"order {order} needs {order} tables, got {len(tables)}")
        self.order = order
        self.tables = tables
        self.starts = starts

    @classmethod
    def from_text(cls, text: str, order: int = 2) -> "NgramModel":
        words = text.split()
        if not words:
            raise ValueError("the corpus has no words")
        tables: Tables = [defaultdict(lambda: defaultdict(int)) for _ in range(order)]
        starts: Dict[str, int] = defaultdict(int)
        for i, word in enumerate(words):
            if i == 0 or SENTENCE_END.search(words[i - 1]):
                starts[word] += 1
            for k in range(order):
                if i - k < 0:
                    break
                context = " ".join(words[i - k : i])
                tables[k][context][word] += 1
        plain = [{ctx: dict(nxt) for ctx, nxt in table.items()} for table in tables]
        return cls(order, plain, dict(starts))

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "order": self.order,
            "starts": self.starts,
            "tables": self.tables,
        }

    @classmethod
    def from_json(cls, data: dict) -> "NgramModel":
        if data.get("format") != FORMAT:
            raise ValueError(f"not {FORMAT} weights (format={data.get('format')!r})")
        return cls(int(data["order"]), data["tables"], data["starts"])

    def vocabulary(self) -> set:
        return set(self.tables[0][""])

    def generate(self, prompt: str, max_tokens: int, seed: int) -> Iterator[str]:
        """Yield up to max_tokens words, each with a leading space, continuing prompt."""
        rng = random.Random(seed)
        history = prompt.split()
        for _ in range(max_tokens):
            word = self._next_word(history, rng)
            history.append(word)
            yield " " + word

    def _next_word(self, history: List[str], rng: random.Random) -> str:
        if not history:
            return _weighted_choice(self.starts, rng)
        # Back off from the longest context we have seen to the unigram table.
        for k in range(min(self.order - 1, len(history)), -1, -1):
            context = " ".join(history[-k:]) if k else ""
            candidates = self.tables[k].get(context)
            if candidates:
                return _weighted_choice(candidates, rng)
        raise RuntimeError("the model has an empty unigram table")


def _weighted_choice(counts: Dict[str, int], rng: random.Random) -> str:
    words = sorted(counts)
    return rng.choices(words, weights=[counts[w] for w in words], k=1)[0]


def read_source(source: Union[str, PathLike]) -> bytes:
    """Read bytes from an http(s)/data/file URL or a local path (a directory holds one .json)."""
    text = str(source)
    scheme = urllib.parse.urlparse(text).scheme
    if scheme in ("http", "https", "data"):
        with urllib.request.urlopen(text, timeout=120) as response:
            return response.read()
    if scheme == "file":
        text = urllib.request.url2pathname(urllib.parse.urlparse(text).path)
    path = Path(text)
    if path.is_dir():
        candidates = sorted(path.glob("*.json"))
        if not candidates:
            raise FileNotFoundError(f"no .json weights file in {path}")
        path = candidates[0]
    return path.read_bytes()


def load(source: Optional[Union[str, PathLike]] = None) -> NgramModel:
    """Load weights from source, or build a bigram model of the bundled corpus."""
    if source is None or str(source) == "":
        return NgramModel.from_text(DEFAULT_CORPUS.read_text(encoding="utf-8"))
    raw = read_source(source)
    try:
        data = json.loads(raw)
    except ValueError:
        # Plain text weights are a corpus: be liberal and build a model from it.
        return NgramModel.from_text(raw.decode("utf-8", errors="replace"))
    return NgramModel.from_json(data)
