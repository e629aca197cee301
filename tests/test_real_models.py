"""The real built-in models (embeddings, speech, OCR) through the official client.

Their environments (onnxruntime, Piper, RapidOCR from the package registry) build once, on
the session stack's first prediction of each; the first test watches that prediction wait in
``starting`` while the build runs. The checks are about meaning: paraphrases embed closer
than unrelated texts, the speech is a WAV of plausible length that is not silence, OCR reads
the text Pillow drew.
"""

from __future__ import annotations

import base64
import io
import math
import os
import time
import wave
from array import array
from pathlib import Path
from typing import Any

import httpx
import replicate
from PIL import Image, ImageDraw, ImageFont
from sqlmodel import Session, select

from activities.predictions import model_cpu_threads
from replicant.envs import env_ready
from replicant.settings import Settings
from replicant.tables import Model, Version
from replicant.versions import version_python
from tests.conftest import TERMINAL, LiveStack

# A build is a minute of pip on a quiet machine; the suite's machine is seldom quiet.
BUILD_TIMEOUT = 900.0


def official(live: LiveStack) -> replicate.Client:
    return replicate.Client(api_token=live.token, base_url=live.url, timeout=120)


def latest_version(live: LiveStack, ref: str) -> Version:
    owner, name = ref.split("/")
    with Session(live.engine) as session:
        model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).one()
        version = session.get(Version, model.latest_version_id)
    assert version is not None
    return version


def run_once_built(live: LiveStack, ref: str, input: dict[str, Any]) -> Any:
    """Run ``ref``; its first prediction of the session waits for the env build."""
    prediction = official(live).models.predictions.create(ref, input=input)
    body = live.wait_for(prediction.id, timeout=BUILD_TIMEOUT)
    assert body["status"] == "succeeded", body
    return body["output"]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_a_prediction_waits_in_starting_while_its_env_builds(live: LiveStack) -> None:
    version = latest_version(live, "replicant/embeddings")
    python = version_python(version)
    # The session's stack seeds without building (prebuild_envs off): nothing is built yet.
    assert not env_ready(python), f"{python} is built already"
    created = live.client().post(
        "/v1/models/replicant/embeddings/predictions",
        json={"input": {"texts": ["building"]}},
    )
    assert created.status_code == 201, created.text
    prediction_id = created.json()["id"]
    seen: list[str] = []
    deadline = time.monotonic() + BUILD_TIMEOUT
    with live.client() as api:
        while True:
            ready = env_ready(python)
            body = api.get(f"/v1/predictions/{prediction_id}").json()
            if not ready:
                # Read before the env was ready: the prediction cannot have started.
                assert body["status"] == "starting", body
            seen.append(body["status"])
            if body["status"] in TERMINAL:
                break
            assert time.monotonic() < deadline, f"still {body['status']} after the build"
            time.sleep(0.5)
    assert body["status"] == "succeeded", body
    assert seen.count("starting") > 1  # it was observed waiting, not only finished
    assert len(body["output"][0]["embedding"]) == 384


def test_embeddings_put_paraphrases_closer_than_unrelated_texts(live: LiveStack) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone is playing an acoustic guitar.",
        "The stock market fell sharply on Tuesday.",
    ]
    output = run_once_built(live, "replicant/embeddings", {"texts": texts, "normalize": True})
    assert [item["text"] for item in output] == texts
    vectors = [item["embedding"] for item in output]
    assert {len(v) for v in vectors} == {384}
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    paraphrase = cosine(vectors[0], vectors[1])
    unrelated = cosine(vectors[0], vectors[2])
    assert paraphrase > 0.5 and unrelated < 0.3 and paraphrase > unrelated + 0.3

    raw = official(live).run("replicant/embeddings", input={"texts": texts[:1], "normalize": False})
    norm = math.sqrt(sum(x * x for x in raw[0]["embedding"]))
    assert not math.isclose(norm, 1.0, rel_tol=1e-2)
    # The direction is the same with and without normalizing.
    assert cosine(raw[0]["embedding"], vectors[0]) > 0.999


def test_embeddings_pad_to_the_longest_text_and_truncate_long_ones(live: LiveStack) -> None:
    short = "Cats sleep."
    long = " ".join(["The quick brown fox jumps over the lazy dog."] * 80)  # > 256 tokens
    run_once_built(live, "replicant/embeddings", {"texts": [short]})
    alone = official(live).run("replicant/embeddings", input={"texts": [short]})
    batched = official(live).run("replicant/embeddings", input={"texts": [short, long]})
    # Padding is masked out: a short text embeds the same alone and beside a long one.
    assert cosine(alone[0]["embedding"], batched[0]["embedding"]) > 0.999
    assert len(batched[1]["embedding"]) == 384


def wav_of(output: Any) -> wave.Wave_read:
    # The client gives a FileOutput, or the URL of the file when it does not wrap it.
    data = output.read() if hasattr(output, "read") else httpx.get(output, timeout=60).content
    assert isinstance(data, bytes) and data[:4] == b"RIFF", output
    return wave.open(io.BytesIO(data))


def test_speech_is_a_wav_of_plausible_length_that_is_not_silence(live: LiveStack) -> None:
    text = "Hello from Replicant. This sentence was spoken by a real model."
    run_once_built(live, "replicant/speech", {"text": "warm up"})
    client = official(live)
    with wav_of(client.run("replicant/speech", input={"text": text})) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        rate = wav.getframerate()
        assert rate >= 16000
        frames = wav.readframes(wav.getnframes())
    seconds = len(frames) / 2 / rate
    # About 12 words: between one and a half and ten seconds of speech.
    assert 1.5 < seconds < 10, seconds
    samples = array("h", frames)
    rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    assert rms > 300 and max(abs(s) for s in samples) > 3000  # speech, not silence
    with wav_of(client.run("replicant/speech", input={"text": text, "speed": 2.0})) as fast:
        fast_seconds = fast.getnframes() / fast.getframerate()
    assert fast_seconds < seconds * 0.75, (fast_seconds, seconds)


def test_speech_refuses_a_speed_out_of_range(live: LiveStack) -> None:
    with live.client() as api:
        refused = api.post(
            "/v1/models/replicant/speech/predictions", json={"input": {"text": "x", "speed": 3}}
        )
    assert refused.status_code == 422
    assert "speed" in refused.text


def test_speech_refuses_empty_text_and_fails_clearly_on_nothing_to_speak(
    live: LiveStack,
) -> None:
    with live.client() as api:
        refused = api.post("/v1/models/replicant/speech/predictions", json={"input": {"text": ""}})
    assert refused.status_code == 422
    assert refused.json()["invalid_fields"] == [{"field": "text", "message": "must not be empty"}]
    run_once_built(live, "replicant/speech", {"text": "warm up"})
    prediction = official(live).models.predictions.create("replicant/speech", input={"text": "..."})
    body = live.wait_for(prediction.id)
    assert (body["status"], body["error"]) == ("failed", "text: there is nothing in it to speak")


def test_embeddings_of_no_texts_fail_saying_so(live: LiveStack) -> None:
    run_once_built(live, "replicant/embeddings", {"texts": ["warm up"]})
    created = official(live).models.predictions.create("replicant/embeddings", input={"texts": []})
    body = live.wait_for(created.id)
    assert (body["status"], body["error"]) == ("failed", "texts: give at least one text to embed")


def test_ocr_of_a_file_that_is_not_an_image_fails_saying_so(live: LiveStack) -> None:
    text = "data:text/plain;base64," + base64.b64encode(b"not a picture").decode()
    run_once_built(live, "replicant/ocr", {"image": _data_uri_of(blank_png())})
    created = official(live).models.predictions.create("replicant/ocr", input={"image": text})
    body = live.wait_for(created.id)
    # The reason names the input, not the temporary file the model was handed.
    assert body["status"] == "failed"
    assert body["error"] == "image: not an image this model can read (PNG, JPEG, ...)"


def test_ocr_reads_the_text_pillow_drew(live: LiveStack, tmp_path: Path) -> None:
    image = Image.new("RGB", (640, 160), "white")
    draw = ImageDraw.Draw(image)
    draw.text((30, 50), "HELLO REPLICANT 42", fill="black", font=ImageFont.load_default(size=44))
    path = tmp_path / "words.png"
    image.save(path)
    run_once_built(live, "replicant/ocr", {"image": _data_uri(path)})
    with path.open("rb") as handle:
        output = official(live).run("replicant/ocr", input={"image": handle})
    read = output["text"].replace(" ", "").upper()
    assert "HELLO" in read and "REPLICANT" in read and "42" in read, output
    assert output["lines"], output
    for line in output["lines"]:
        assert 0.5 < line["confidence"] <= 1.0
        assert len(line["box"]) == 4
        for x, y in line["box"]:
            assert -2 <= x <= 642 and -2 <= y <= 162


def test_ocr_of_a_blank_image_finds_no_text(live: LiveStack) -> None:
    output = run_once_built(live, "replicant/ocr", {"image": _data_uri_of(blank_png())})
    assert output == {"text": "", "lines": []}


def _data_uri(path: Path) -> str:
    return _data_uri_of(path.read_bytes())


def _data_uri_of(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_cpu_share_of_a_slot_is_the_cpus_over_the_cpu_skus_slots() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert model_cpu_threads(Settings(model_cpu_threads=3)) == 3
    assert model_cpu_threads(Settings(hardware={"cpu": 1})) == cpus
    assert model_cpu_threads(Settings(hardware={"cpu": cpus * 4})) == 1
