"""Live logs and partial output in GET, and SSE streams through both official clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from sse_starlette import ServerSentEvent

from tests.conftest import LiveStack

NGRAM = "replicant/ngram"
JS_DIR = Path(__file__).parent / "js"


def sse_events(response: httpx.Response) -> Iterator[dict[str, str]]:
    """Parse a text/event-stream; comments come out as {"comment": ...}."""
    event: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[name] = event[name] + "\n" + value if name in event else value


def read_stream(url: str, **headers: str) -> list[dict[str, str]]:
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse_events(response))


def create(api: httpx.Client, model: str, input: dict[str, Any]) -> dict[str, Any]:
    response = api.post(f"/v1/models/{model}/predictions", json={"input": input})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def test_get_shows_logs_and_partial_output_before_completion(
    live: LiveStack, api: httpx.Client, slowstream: str
) -> None:
    sleeping = create(api, "replicant/sleep", {"seconds": 3})
    streaming = create(api, slowstream, {"tokens": 6, "interval": 0.5})
    running = live.wait_for(sleeping["id"], lambda p: "slept 1s" in p["logs"])
    assert running["status"] == "processing"
    partial = live.wait_for(streaming["id"], lambda p: bool(p["output"]))
    assert partial["status"] == "processing"
    assert 1 <= len(partial["output"]) < 6
    assert partial["output"] == ["t0 ", "t1 ", "t2 ", "t3 ", "t4 ", "t5 "][: len(partial["output"])]
    assert "token 0" in partial["logs"]
    assert live.wait_for(streaming["id"])["output"] == [f"t{i} " for i in range(6)]
    assert live.wait_for(sleeping["id"])["status"] == "succeeded"


def test_only_iterator_models_have_a_stream_url(api: httpx.Client) -> None:
    hello = create(api, "replicate/hello-world", {"text": "x"})
    assert "stream" not in hello["urls"]
    ngram = create(api, NGRAM, {"max_tokens": 3, "seed": 1})
    assert "?sig=" in ngram["urls"]["stream"]


def test_python_client_streams_the_tokens_in_order(live: LiveStack) -> None:
    client = replicate.Client(api_token=live.token, base_url=live.url)
    input = {"prompt": "the cat", "max_tokens": 40, "seed": 7}
    events = list(client.stream(NGRAM, input=input))
    tokens = [str(e) for e in events if e.event.value == "output"]
    assert events[-1].event.value == "done"
    assert tokens == client.run(NGRAM, input=input)
    assert len(tokens) == 40


def test_js_client_streams_the_tokens_in_order(live: LiveStack, node_client: Path) -> None:
    input = {"prompt": "a dog", "max_tokens": 25, "seed": 11}
    result = subprocess.run(
        ["node", str(node_client), live.url, live.token, NGRAM, json.dumps(input)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    tokens = [e["data"] for e in events if e["event"] == "output"]
    assert events[-1]["event"] == "done"
    assert all(e["id"] for e in events)
    client = replicate.Client(api_token=live.token, base_url=live.url)
    assert tokens == client.run(NGRAM, input=input)


def test_late_joiner_gets_everything_then_done(live: LiveStack, api: httpx.Client) -> None:
    created = create(api, NGRAM, {"prompt": "late", "max_tokens": 15, "seed": 2})
    final = live.wait_for(created["id"])
    # No token: the URL itself is the credential.
    events = read_stream(created["urls"]["stream"])
    outputs = [e["data"] for e in events if e.get("event") == "output"]
    assert outputs == final["output"]
    assert events[-1]["event"] == "done"
    # `done` carries the run's metrics as GET shows them (no `reason`: it succeeded).
    assert json.loads(events[-1]["data"]) == {"metrics": final["metrics"]}
    logs = "\n".join(e["data"] for e in events if e.get("event") == "logs")
    assert "Using seed: 2" in logs
    # Resuming after an event id gets only what came after it.
    third = [e for e in events if e.get("event") == "output"][2]
    rest = read_stream(created["urls"]["stream"], **{"Last-Event-ID": third["id"]})
    assert [e["data"] for e in rest if e.get("event") == "output"] == final["output"][3:]


def test_stream_url_must_carry_its_signature(api: httpx.Client) -> None:
    created = create(api, NGRAM, {"max_tokens": 2, "seed": 1})
    url = created["urls"]["stream"]
    base = url.split("?")[0]
    for bad in (base, base + "?sig=AAAA", url.replace(created["id"], "x" * 26)):
        response = httpx.get(bad, timeout=30)
        assert response.status_code == 404, bad
        assert response.headers["content-type"].startswith("application/problem+json")


def test_live_stream_keeps_alive_and_ends_canceled_when_canceled(
    live: LiveStack, api: httpx.Client, slowstream: str
) -> None:
    created = create(api, slowstream, {"tokens": 100, "interval": 1.5})
    seen: list[dict[str, str]] = []
    canceled = threading.Event()
    with (
        httpx.Client(timeout=60) as client,
        client.stream("GET", created["urls"]["stream"]) as response,
    ):
        for event in sse_events(response):
            seen.append(event)
            outputs = [e for e in seen if e.get("event") == "output"]
            if len(outputs) == 2 and not canceled.is_set():
                canceled.set()
                assert api.post(f"/v1/predictions/{created['id']}/cancel").status_code == 200
    assert [e["data"] for e in seen if e.get("event") == "output"][:2] == ["t0 ", "t1 "]
    assert any("comment" in e for e in seen)  # keep-alive while the model was quiet
    assert seen[-1]["event"] == "done"
    assert json.loads(seen[-1]["data"])["reason"] == "canceled"
    assert live.wait_for(created["id"])["status"] == "canceled"


def test_a_failing_stream_ends_with_error_then_done(
    live: LiveStack, api: httpx.Client, slowstream: str
) -> None:
    created = create(api, slowstream, {"tokens": 5, "interval": 0.1, "fail_after": 2})
    events = [e for e in read_stream(created["urls"]["stream"]) if "comment" not in e]
    assert [e["data"] for e in events if e["event"] == "output"] == ["t0 ", "t1 "]
    assert events[-2]["event"] == "error" and "gave up after 2 tokens" in events[-2]["data"]
    assert json.loads(events[-1]["data"])["reason"] == "error"
    client = replicate.Client(api_token=live.token, base_url=live.url)
    with pytest.raises(RuntimeError, match="gave up"):
        list(client.stream(slowstream, input={"tokens": 3, "interval": 0, "fail_after": 1}))


def test_a_training_streams_its_logs_then_the_version_then_done(live: LiveStack) -> None:
    from tests.trainkit import CorpusServer, corpus, new_destination, train

    token = live.new_account("streamer")
    destination = new_destination(live, token, "streamed")
    training = train(live, token, destination, corpus(seed=11, words=200))
    url = training.urls["stream"]
    assert url.startswith(f"{live.url}/v1/trainings/{training.id}/stream?sig=")
    events = [e for e in read_stream(url) if "comment" not in e]
    logs = "\n".join(e["data"] for e in events if e["event"] == "logs")
    assert "read " in logs and "wrote " in logs
    # The output is the training object's: the version and a signed URL of its weights.
    (output,) = [json.loads(e["data"]) for e in events if e["event"] == "output"]
    assert output.keys() == training.output.keys() == {"version", "weights"}
    assert output["version"] == training.output["version"]
    weights = httpx.get(output["weights"], timeout=30)
    assert weights.status_code == 200
    assert weights.content == httpx.get(training.output["weights"], timeout=30).content
    assert events[-1]["event"] == "done"
    with live.client(token) as api:
        metrics = api.get(f"/v1/trainings/{training.id}").json()["metrics"]
    assert json.loads(events[-1]["data"]) == {"metrics": metrics}
    # Resuming after the last log line gets only the output and the end.
    last_log = [e for e in events if e["event"] == "logs"][-1]
    rest = read_stream(url, **{"Last-Event-ID": last_log["id"]})
    assert [e["event"] for e in rest if "comment" not in e][-2:] == ["output", "done"]

    # A live one: the logs come before the training ends, the end comes once it does.
    corpora = CorpusServer(held=True)
    try:
        with live.client(token) as api:
            version = api.get("/v1/models/replicant/ngram").json()["latest_version"]["id"]
            started = api.post(
                f"/v1/models/replicant/ngram/versions/{version}/trainings",
                json={
                    "destination": destination,
                    "input": {"text": corpora.add("c.txt", corpus(seed=12, words=200))},
                },
            )
            assert started.status_code == 201, started.text
        seen: list[dict[str, str]] = []
        with (
            httpx.Client(timeout=60) as client,
            client.stream("GET", started.json()["urls"]["stream"]) as response,
        ):
            corpora.release()  # connected while the training waits for its corpus
            seen.extend(sse_events(response))
        kinds = [e.get("event") for e in seen if "comment" not in e]
        assert kinds[0] == "logs" and kinds[-2:] == ["output", "done"], kinds
    finally:
        corpora.close()


def test_a_training_stream_url_must_carry_its_own_signature(live: LiveStack) -> None:
    from tests.trainkit import corpus, data_uri, new_destination, ngram_version

    token = live.new_account("signer")
    destination = new_destination(live, token, "signed")
    with live.client(token) as api:
        started = api.post(
            f"/v1/models/replicant/ngram/versions/{ngram_version(live)}/trainings",
            json={"destination": destination, "input": {"text": data_uri(corpus(13, 50))}},
        ).json()
    url = started["urls"]["stream"]
    base, _, sig = url.partition("?sig=")
    # A prediction's signature of the same id opens nothing here.
    from replicant.serialize import stream_signature

    as_prediction = stream_signature(started["id"], live.settings.ensure_secret_key())
    for bad in (base, f"{base}?sig=AAAA", f"{base}?sig={as_prediction}"):
        response = httpx.get(bad, timeout=30)
        assert response.status_code == 404, bad
        assert response.headers["content-type"].startswith("application/problem+json")
    assert read_stream(url)[-1]["event"] == "done"


async def test_a_stream_with_steady_events_sends_no_keep_alive_between_them() -> None:
    from api.routes.streams import keep_alive

    async def steady() -> AsyncIterator[ServerSentEvent]:
        # 100 events a hundredth of a second apart: five keep-alive intervals of traffic.
        for i in range(100):
            yield ServerSentEvent(str(i), event="output")
            await asyncio.sleep(0.01)

    sent = [e async for e in keep_alive(steady(), quiet=0.2)]
    assert [e.comment for e in sent if e.comment is not None] == []
    assert [e.data for e in sent] == [str(i) for i in range(100)]


async def test_a_quiet_stream_sends_keep_alives_only_while_it_is_quiet() -> None:
    from api.routes.streams import keep_alive

    resume = asyncio.Event()

    async def with_a_gap() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent("before", event="output")
        await resume.wait()
        yield ServerSentEvent("after", event="output")

    sent: list[str] = []
    async for event in keep_alive(with_a_gap(), quiet=0.05):
        sent.append(event.comment or event.data)
        if sent.count("ping") == 3:
            resume.set()  # the source speaks again after three keep-alives
    assert sent == ["before", "ping", "ping", "ping", "after"]
