"""Rows become response bodies with the keys Replicate's clients expect: nullable fields
present as null, non-nullable ones absent until known, Replicant's extras passed through."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from api.serialize import json_response
from replicant import serialize
from replicant.tables import Account, Prediction, Training

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_new_prediction_has_nullable_fields_as_null_and_unknown_times_absent() -> None:
    row = Prediction(id="p1", owner="u", model="a/b", version="v1", created_at=NOW)
    body = serialize.prediction_json(row, "http://h", secret_key="k")
    assert body == {
        "id": "p1",
        "model": "a/b",
        "version": "v1",
        "input": {},
        "logs": "",
        "output": None,
        "data_removed": False,
        "error": None,
        "status": "starting",
        "source": "api",
        "created_at": "2026-01-02T03:04:05Z",
        "urls": {
            "get": "http://h/v1/predictions/p1",
            "cancel": "http://h/v1/predictions/p1/cancel",
            "web": "http://h/p/p1",
        },
        "hardware": "cpu",
    }


def test_finished_prediction_shows_times_metrics_webhook_and_stream() -> None:
    row = Prediction(
        id="p2",
        owner="u",
        model="a/b",
        version="v1",
        status="aborted",
        stream=True,
        created_at=NOW,
        started_at=NOW,
        completed_at=NOW,
        deadline=NOW,
        deployment="u/d",
        metrics={"predict_time": 0.5, "total_time": 1.25, "queue_time": 0.75},
        webhook="http://w/hook",
        webhook_events_filter=["completed"],
        output=[1, {"x": None}],
    )
    body = serialize.prediction_json(row, "http://h", secret_key="k")
    for key in ("started_at", "completed_at", "deadline"):
        assert body[key] == "2026-01-02T03:04:05Z"
    assert body["deployment"] == "u/d"
    # Measures beyond the spec's pass through.
    assert body["metrics"] == {"predict_time": 0.5, "total_time": 1.25, "queue_time": 0.75}
    assert body["webhook"] == "http://w/hook"
    assert body["webhook_events_filter"] == ["completed"]
    assert body["output"] == [1, {"x": None}]
    assert body["urls"]["stream"].startswith("http://h/v1/predictions/p2/stream?sig=")
    assert body["status"] == "aborted"
    hidden = serialize.prediction_json(row, "http://h", secret_key="k", show_aborted=False)
    assert hidden["status"] == "canceled"


def test_json_response_renders_the_same_body_once() -> None:
    row = Prediction(id="p3", owner="u", model="a/b", version="v1", created_at=NOW)
    obj = serialize.prediction(row, "http://h", secret_key="k")
    response = json_response(obj, 201, {"Location": obj.urls.get})
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    assert response.headers["location"] == "http://h/v1/predictions/p3"
    assert json.loads(response.body) == serialize.body(obj)


def test_training_output_carries_signed_weights_and_extra_keys() -> None:
    row = Training(
        id="t1",
        owner="u",
        model="a/b",
        version="v1",
        destination="u/c",
        status="succeeded",
        created_at=NOW,
        output={"version": "v2", "note": "kept"},
        weights_key="trainings/t1/weights.tar",
    )
    body = serialize.training_json(
        row, "http://h", secret_key="k", weights_url=lambda key: f"signed:{key}"
    )
    assert body["output"] == {
        "version": "v2",
        "note": "kept",
        "weights": "signed:trainings/t1/weights.tar",
    }
    assert "started_at" not in body and "webhook" not in body
    assert body["error"] is None
    assert body["urls"]["web"] == "http://h/t/t1"
    sig = serialize.stream_signature("t1", "k", "trainings")
    assert body["urls"]["stream"] == f"http://h/v1/trainings/t1/stream?sig={sig}"
    # A training's signature is its own: a prediction with the same id gets another.
    assert sig != serialize.stream_signature("t1", "k")


def test_account_leaves_out_an_unset_github_url() -> None:
    body = serialize.body(serialize.account(Account(username="ann", name="")))
    assert body == {"type": "user", "username": "ann", "name": "ann", "fairness_weight": 1.0}
    linked = Account(username="bo", name="Bo", github_url="https://github.com/bo")
    assert serialize.body(serialize.account(linked))["github_url"] == "https://github.com/bo"
