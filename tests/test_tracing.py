"""One trace per prediction: the API's request, its workflow and activities, and the model's
run, sent over OTLP/HTTP to a real receiver started here (tests/otlp.py).

A stack of its own: tracing is on only when ``REPLICANT_OTLP_ENDPOINT`` is set. Its models
run sandboxed with the default ``model_egress`` (none): their spans reach the collector
through the pool's relay (workers/runners/spans.py), and nothing else becomes reachable.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1 import trace_pb2
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.conftest import LiveStack, own_stack
from tests.modelkit import hostile_model, predict, pushed, someone
from tests.otlp import OtlpReceiver, Span, otlp_receiver
from tests.trainkit import corpus, new_destination, train
from tests.waiting import wait_until
from workers.runners.spans import MAX_EXPORT_BYTES, SpanRelay

HELLO = "replicate/hello-world"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LiveStack]:
    # The default egress (none): the model's spans leave its sandbox through the relay only.
    with own_stack(tmp_path_factory, "tracing", otlp_endpoint=collector.url) as live:
        assert live.settings.model_egress == "none"
        yield live


def one(spans: list[Span], prefix: str) -> Span:
    found = [s for s in spans if s.name.startswith(prefix)]
    assert len(found) == 1, (prefix, [s.name for s in spans])
    return found[0]


def test_a_prediction_is_one_trace_from_api_to_activity(
    traced: LiveStack, collector: OtlpReceiver
) -> None:
    with traced.client() as api:
        response = api.post(
            f"/v1/models/{HELLO}/predictions",
            json={"input": {"text": "traced"}},
            headers={"Prefer": "wait"},
        )
    assert response.status_code == 201, response.text
    prediction = response.json()
    assert prediction["output"] == "hello traced"

    def this_trace() -> list[Span]:
        spans = collector.snapshot()
        workflow = f"prediction-{prediction['id']}"
        starts = [s for s in spans if s.attributes.get("temporalWorkflowID") == workflow]
        return [s for s in spans if starts and s.trace_id == starts[0].trace_id]

    def complete(spans: list[Span]) -> bool:
        names = {s.name for s in spans}
        return {
            "POST /v1/models/{owner}/{name}/predictions",
            "RunActivity:run_prediction",
            "PUT /predictions/{id}",
            "cog.prediction.execute",
        } <= names

    spans = wait_until(this_trace, complete, what="the prediction's spans at the receiver")
    by_id = {s.span_id: s for s in spans}

    def ancestors(span: Span) -> list[str]:
        names = []
        while span.parent_id in by_id:
            span = by_id[span.parent_id]
            names.append(span.name)
        return names

    # The API's request (FastAPI's server span) is the root; the workflow starts within it.
    request = one(spans, "POST /v1/models/{owner}/{name}/predictions")
    assert request.parent_id == "" and request.service == "replicant-api"
    start = one(spans, "StartUpdateWithStartWorkflow:PredictionWorkflow")
    assert request.name in ancestors(start)
    # The worker runs the workflow under the API's start (temporalio's TracingInterceptor
    # parents a workflow's spans to the context its start carried) ...
    run = [s for s in spans if s.name == "RunWorkflow:PredictionWorkflow"]
    assert run and all(
        s.parent_id == start.span_id and s.service == "replicant-worker" for s in run
    )
    # ... and the prediction's activity, scheduled by the workflow, runs under its scheduling.
    scheduled = one(spans, "StartActivity:run_prediction")
    assert scheduled.parent_id == start.span_id
    activity = one(spans, "RunActivity:run_prediction")
    assert activity.parent_id == scheduled.span_id and activity.service == "replicant-worker"
    # coglet continues the activity's traceparent: its request span, then the model's run.
    put = one(spans, "PUT /predictions/{id}")
    assert put.parent_id == activity.span_id and put.service == "replicant-model"
    execute = one(spans, "cog.prediction.execute")
    assert put.name in ancestors(execute) and execute.service == "replicant-model"
    # The prediction names its trace (an extension both official clients ignore).
    assert prediction["trace_id"] == request.trace_id
    with traced.client() as api:
        shown = api.get(f"/v1/predictions/{prediction['id']}").json()
    assert shown["trace_id"] == request.trace_id
    # ... and so do the worker's log lines about it.
    assert traced.stack.log_dir is not None
    worker_log = traced.stack.log_dir / "worker.log"

    def its_log_lines() -> list[dict[str, Any]]:
        lines = [
            json.loads(line) for line in worker_log.read_text().splitlines() if line[:1] == "{"
        ]
        return [e for e in lines if e.get("prediction_id") == prediction["id"]]

    lines = wait_until(its_log_lines, what="the worker's log lines about the prediction")
    assert all(e.get("trace_id") == request.trace_id for e in lines), lines


def test_a_training_is_one_trace_and_names_it(traced: LiveStack, collector: OtlpReceiver) -> None:
    destination = new_destination(traced, traced.token, "traced-ngram")
    training = train(traced, traced.token, destination, corpus(30, 200))
    with traced.client() as api:
        shown = api.get(f"/v1/trainings/{training.id}").json()
        listed = api.get("/v1/trainings").json()["results"]
    trace_id = shown["trace_id"]
    assert [t["trace_id"] for t in listed if t["id"] == training.id] == [trace_id]

    def this_trace() -> list[Span]:
        return [s for s in collector.snapshot() if s.trace_id == trace_id]

    def complete(spans: list[Span]) -> bool:
        # The activity's run and a model span under it (the trainer's batches come apart).
        runs = {s.span_id for s in spans if s.name == "RunActivity:run_training"}
        return any(s.service == "replicant-model" and s.parent_id in runs for s in spans)

    spans = wait_until(this_trace, complete, what="the training's spans at the receiver")
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_id == ""]
    assert [(s.name, s.service) for s in roots] == [
        ("POST /v1/models/{owner}/{name}/versions/{version_id}/trainings", "replicant-api")
    ], roots
    start = one(spans, "StartWorkflow:TrainingWorkflow")
    assert by_id[start.parent_id].service == "replicant-api"
    activity = one(spans, "RunActivity:run_training")
    assert by_id[activity.parent_id].name == "StartActivity:run_training"
    # The trainer's process (sandboxed, egress none) continues the activity's trace.
    model = [s for s in spans if s.service == "replicant-model"]
    under = [s for s in model if s.parent_id == activity.span_id]
    assert under and all(s.name.startswith("PUT /trainings/") for s in under), under


def test_a_traced_sandboxed_model_reaches_nothing_but_the_relay(
    tmp_path: Path, traced: LiveStack, collector: OtlpReceiver
) -> None:
    """The relay adds no address: the hostile model (tests/models/hostile) reaches neither
    the collector itself nor any of the installation's services, files or secrets, while
    its own prediction's model spans still arrive."""
    port = int(collector.url.rpartition(":")[2])
    who = someone(traced, "hostile")
    src = hostile_model(tmp_path, traced, ("127.0.0.1", port))
    targets = json.loads((src / "targets.json").read_text())
    assert ["127.0.0.1", port] in targets["connects"]
    ref = f"{who.username}/hostile"
    pushed(traced, who, ref, src, create=True, visibility="private")
    with who.client(traced) as client:
        response = predict(client, ref, {})
    prediction = response.json()
    assert prediction["status"] == "succeeded", prediction
    assert prediction["output"] == []  # every read and connect in it failed

    def model_spans() -> list[Span]:
        return [
            s
            for s in collector.snapshot()
            if s.trace_id == prediction["trace_id"] and s.service == "replicant-model"
        ]

    spans = wait_until(model_spans, what="the hostile prediction's model spans")
    assert "PUT /predictions/{id}" in {s.name for s in spans}


def test_the_span_relay_forwards_exports_to_the_collector_only(collector: OtlpReceiver) -> None:
    """The relay (workers/runners/spans.py) POSTs an export as it came to the collector's
    traces URL and answers its status; too large, it sends nothing; a collector that is
    down is a 502."""
    span = trace_pb2.Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="relayed export")
    export = ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
    ).SerializeToString()
    headers = {"Content-Type": "application/x-protobuf"}
    relay = SpanRelay(f"{collector.url}/v1/traces")
    down = SpanRelay("http://127.0.0.1:9/v1/traces")  # the discard port: nothing listens
    app = Starlette(
        routes=[
            Route("/relay", relay.forward, methods=["POST"]),
            Route("/down", down.forward, methods=["POST"]),
        ]
    )
    with TestClient(app) as client:
        assert client.post("/relay", content=export, headers=headers).status_code == 200
        oversized = b"\0" * (MAX_EXPORT_BYTES + 1)
        assert client.post("/relay", content=oversized, headers=headers).status_code == 413
        assert client.post("/down", content=export, headers=headers).status_code == 502
        client.portal.call(relay.close)
        client.portal.call(down.close)
    relayed = wait_until(
        lambda: [s for s in collector.snapshot() if s.name == "relayed export"],
        what="the relayed span at the collector",
    )
    assert relayed[0].trace_id == "01" * 16


def test_untraced_stack_sets_up_no_tracing(api: httpx.Client) -> None:
    """Off by default: the shared stack has no endpoint, so its predictions carry no trace."""
    response = api.post(
        f"/v1/models/{HELLO}/predictions",
        json={"input": {"text": "untraced"}},
        headers={"Prefer": "wait"},
    )
    assert response.status_code == 201, response.text
    assert "trace_id" not in response.json()
