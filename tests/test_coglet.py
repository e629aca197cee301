"""coglet's wire protocol as the runner pool reads it: pure functions, no processes."""

from __future__ import annotations

import json

from replicant.runner import CogPrediction
from workers.runners.coglet import (
    explain_model_error,
    health,
    parse_answer,
    parse_log_line,
    parse_prediction,
    prediction_path,
    rank,
    request_body,
    setup_error,
)


def test_paths_name_predictions_or_trainings_and_quote_the_id() -> None:
    assert prediction_path("predict", "abc") == "/predictions/abc"
    assert prediction_path("train", "a/b c") == "/trainings/a%2Fb%20c"


def test_a_webhook_asks_for_output_logs_and_completion() -> None:
    assert request_body({"x": 1}, None) == {"input": {"x": 1}}
    assert request_body({}, "http://h/s/p") == {
        "input": {},
        "webhook": "http://h/s/p",
        "webhook_events_filter": ["output", "logs", "completed"],
    }


def test_an_answer_of_200_is_the_prediction() -> None:
    body = {"status": "succeeded", "output": "hi", "logs": "a\n", "metrics": {"predict_time": 1}}
    result = parse_answer(200, json.dumps(body).encode())
    assert result == CogPrediction(
        status="succeeded", output="hi", logs="a\n", metrics={"predict_time": 1}
    )


def test_a_prediction_without_status_or_with_odd_metrics_reads_as_failed_without_metrics() -> None:
    result = parse_prediction({"error": 3, "metrics": [1]})
    assert (result.status, result.error, result.metrics) == ("failed", "3", {})


def test_an_answer_of_422_names_the_fields() -> None:
    detail = [
        {"loc": ["body", "input", "n"], "msg": "not an integer"},
        {"loc": ["body", "input", "s"], "msg": "required"},
    ]
    result = parse_answer(422, json.dumps({"detail": detail}).encode())
    assert (result.status, result.error) == ("failed", "n: not an integer; s: required")


def test_any_other_answer_fails_with_coglets_status_and_text() -> None:
    result = parse_answer(500, b"boom" * 200)
    assert result.status == "failed"
    assert result.error is not None and result.error.startswith("coglet answered HTTP 500: boom")
    assert len(result.error) == len("coglet answered HTTP 500: ") + 500
    unreadable = parse_answer(200, b"not json")
    assert unreadable.error == "coglet answered HTTP 200: not json"


def test_webhook_deliveries_rank_terminal_then_output_then_logs() -> None:
    deliveries = [
        {"status": "processing", "output": ["a"], "logs": "xxxx"},
        {"status": "processing", "output": ["a", "b"], "logs": ""},
        {"status": "succeeded", "output": ["a"], "logs": ""},
    ]
    assert sorted(deliveries, key=rank) == deliveries
    assert rank({"status": "processing", "output": "one"}) == (0, 1, 0)


def test_a_model_error_keeps_its_message_and_ends_the_logs_with_type_and_message() -> None:
    result = CogPrediction(
        status="failed", error="Prediction failed: Prediction failed: ValueError: bad n", logs="x"
    )
    explain_model_error(result)
    assert result.error == "bad n"
    assert result.logs == "x\nValueError: bad n\n"
    # Logs that already end with it (the traceback from model_entry) are kept as they are.
    tb = "Traceback...\nValueError: bad n\n"
    again = CogPrediction(status="failed", error="Prediction failed: ValueError: bad n", logs=tb)
    explain_model_error(again)
    assert again.logs == tb


def test_an_exception_without_a_message_reports_its_type_and_other_errors_stay() -> None:
    bare = CogPrediction(status="failed", error="Generator iteration error: StopIteration: ")
    explain_model_error(bare)
    assert bare.error == "StopIteration"
    plain = CogPrediction(status="failed", error="coglet answered HTTP 500: x")
    explain_model_error(plain)
    assert plain.error == "coglet answered HTTP 500: x" and plain.logs == ""
    odd = CogPrediction(status="failed", error="Training failed: something broke")
    explain_model_error(odd)
    assert odd.error == "something broke"


def test_a_setup_error_is_the_models_exception() -> None:
    text = "worker setup failed (slot 0): setup failed: RuntimeError: no weights\n"
    assert setup_error(text) == "RuntimeError: no weights"
    assert setup_error("  ") == ""


def test_health_reads_the_status_of_a_body() -> None:
    assert health({"status": "READY", "setup": {}}) == "READY"
    assert health({"status": None}) is None
    assert health(["READY"]) is None


def test_log_lines_are_made_readable_and_prediction_records_keep_their_fields() -> None:
    record = {
        "target": "coglet::worker",
        "fields": {"message": "hello", "prediction_id": "p1", "source": "stdout"},
    }
    line = parse_log_line(json.dumps(record))
    assert line.text == "[coglet::worker] hello prediction_id=p1"
    assert line.fields == record["fields"]
    other = parse_log_line(json.dumps({"target": "t", "fields": {"message": "up", "port": 1}}))
    assert (other.text, other.fields) == ("[t] up port=1", None)
    assert parse_log_line("plain print").text == "plain print"
    assert parse_log_line("{not json").text == "{not json"
    assert parse_log_line("{not json").fields is None


def test_what_setup_printed_is_told_from_coglets_own_lines() -> None:
    """coglet 0.23.1 writes a setup() print as ``coglet::user`` (no prediction id), at times
    after its own record that setup completed."""
    printed = {"target": "coglet::user", "fields": {"message": "Trainer is setting up."}}
    assert parse_log_line(json.dumps(printed)).setup_print == "Trainer is setting up."
    sourced = {"target": "coglet::setup", "fields": {"message": "loading", "source": "stdout"}}
    assert parse_log_line(json.dumps(sourced)).setup_print == "loading"
    own = {"target": "coglet::worker_bridge", "fields": {"message": "Setup complete"}}
    assert parse_log_line(json.dumps(own)).setup_print is None
    run = {"target": "coglet::prediction", "fields": {"message": "hi", "prediction_id": "p"}}
    assert parse_log_line(json.dumps(run)).setup_print is None
