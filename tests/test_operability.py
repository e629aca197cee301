"""Operability of the running stack: Prometheus metrics of the API, JSON logs of the worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from api.metrics import ReadModelCollector
from replicant.db import init_db, make_engine
from replicant.tables import Prediction
from tests.conftest import LiveStack
from tests.waiting import wait_until

HELLO = "replicate/hello-world"


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus endpoint, keyed by name and labels."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def run_hello(api: httpx.Client, text: str) -> dict[str, Any]:
    body = {"input": {"text": text}}
    response = api.post(f"/v1/models/{HELLO}/predictions", json=body, headers={"Prefer": "wait"})
    assert response.status_code == 201, response.text
    prediction: dict[str, Any] = response.json()
    assert prediction["status"] == "succeeded"
    return prediction


def test_metrics_expose_latency_predictions_and_queue_backlog(
    live: LiveStack, api: httpx.Client
) -> None:
    before = scrape(f"{live.url}/metrics")
    prediction = run_hello(api, "metrics")
    assert api.get(f"/v1/predictions/{prediction['id']}").status_code == 200
    assert api.get("/v1/no/such/thing").status_code == 404
    samples = scrape(f"{live.url}/metrics")

    def count(route: str, method: str, status: str, source: dict[Any, float]) -> float:
        labels = frozenset({"route": route, "method": method, "status": status}.items())
        return source.get(("replicant_http_request_duration_seconds_count", labels), 0.0)

    create = ("/v1/models/{owner}/{name}/predictions", "POST", "201")
    get = ("/v1/predictions/{prediction_id}", "GET", "200")
    for route, method, status in (create, get):
        assert count(route, method, status, samples) == count(route, method, status, before) + 1
    # Paths that match no route share one label instead of one series each.
    assert count("unmatched", "GET", "404", samples) >= 1
    assert not any("/v1/no/such/thing" in str(labels) for _, labels in samples)

    # An ended prediction's count is at most metrics_count_interval old: it catches up.
    succeeded = ("replicant_predictions", frozenset({("status", "succeeded")}))
    wait_until(
        lambda: scrape(f"{live.url}/metrics").get(succeeded, 0),
        lambda counted: counted >= before.get(succeeded, 0) + 1,
        what="the succeeded prediction counted in replicant_predictions",
    )
    for sku in live.settings.hardware:
        backlog = ("replicant_queue_backlog", frozenset({("hardware", sku)}))
        assert samples[backlog] >= 0


def counted(collector: ReadModelCollector) -> dict[str, float]:
    (family,) = collector.collect()
    return {sample.labels["status"]: sample.value for sample in family.samples}


def test_ended_predictions_are_counted_at_most_once_per_interval_running_ones_always(
    tmp_path: Path,
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/replicant.db")
    init_db(engine)

    def add(pid: str, status: str) -> None:
        with Session(engine) as session:
            session.add(Prediction(id=pid, owner="u", model="a/b", version="v", status=status))
            session.commit()

    add("p1", "succeeded")
    add("p2", "failed")
    every_scrape = ReadModelCollector(engine, count_interval=0)
    once_an_hour = ReadModelCollector(engine, count_interval=3600)
    assert counted(every_scrape) == counted(once_an_hour) == {"succeeded": 1, "failed": 1}
    add("p3", "succeeded")
    add("p4", "processing")
    add("p5", "starting")
    assert counted(every_scrape) == {"succeeded": 2, "failed": 1, "processing": 1, "starting": 1}
    # The ended count is reused within the interval; waiting and running ones are fresh.
    assert counted(once_an_hour) == {"succeeded": 1, "failed": 1, "processing": 1, "starting": 1}
    # Past the interval a scrape counts the ended ones again.
    short = ReadModelCollector(engine, count_interval=0.2)
    assert counted(short)["succeeded"] == 2
    add("p6", "canceled")
    wait_until(
        lambda: counted(short),
        lambda counts: counts.get("canceled") == 1,
        what="a count of ended predictions after the interval",
    )
    engine.dispose()


def test_worker_logs_are_json_lines_with_the_prediction_id(
    live: LiveStack, api: httpx.Client
) -> None:
    prediction = run_hello(api, "logs")
    assert live.stack.log_dir is not None
    lines = (live.stack.log_dir / "worker.log").read_text().splitlines()
    mine = [line for line in lines if prediction["id"] in line]
    assert mine, "the worker logged nothing about the prediction"
    for line in mine:
        entry = json.loads(line)
        assert entry["prediction_id"] == prediction["id"], entry
        assert entry["workflow_id"] == f"prediction-{prediction['id']}"
        assert {"time", "level", "logger", "message", "activity"} <= set(entry)
    done = [json.loads(line) for line in mine if "event=prediction_done" in line]
    assert [entry["activity"] for entry in done] == ["run_prediction"]
    # Every line logged inside an activity names its prediction (or training).
    for line in lines:
        if line.startswith("{"):
            entry = json.loads(line)
            if str(entry.get("workflow_id", "")).startswith("prediction-"):
                assert entry["prediction_id"] == entry["workflow_id"].removeprefix("prediction-")
