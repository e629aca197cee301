"""One trace per prediction: the API's request, its workflow and activities, and the model's
run, sent over OTLP/HTTP to a real receiver started here (tests/otlp.py).

A stack of its own: tracing is on only when ``REPLICANT_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveStack, own_stack
from tests.otlp import OtlpReceiver, Span, otlp_receiver
from tests.waiting import wait_until

HELLO = "replicate/hello-world"


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LiveStack]:
    # The model's spans go from its sandbox to the collector over the worker's network
    # (docs/tracing.md: with model_egress none or public they do not reach it yet).
    overrides = {"otlp_endpoint": collector.url, "model_egress": "unrestricted"}
    with own_stack(tmp_path_factory, "tracing", **overrides) as live:
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


def test_untraced_stack_sets_up_no_tracing(api: httpx.Client) -> None:
    """Off by default: the shared stack has no endpoint, so its predictions carry no trace."""
    response = api.post(
        f"/v1/models/{HELLO}/predictions",
        json={"input": {"text": "untraced"}},
        headers={"Prefer": "wait"},
    )
    assert response.status_code == 201, response.text
    assert "trace_id" not in response.json()
