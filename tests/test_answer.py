"""Reading coglet's answer piece by piece, within the limits on logs and output
(workers/runners/answer.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from workers.runners.answer import (
    AnswerReader,
    LogTail,
    answered_prediction,
    logs_marker,
    output_too_large,
    tail_of,
)

ANSWER: dict[str, Any] = {
    "status": "succeeded",
    "output": ['a"b\\', {"x": [1, 2, {"y": "}]"}]}],
    "n": -1.5e3,
    "t": True,
    "z": None,
    "logs": "line\n" * 1000 + 'é\\"',
    "error": None,
    "metrics": {"predict_time": 0.1},
}
BODY = json.dumps(ANSWER).encode()


def read(body: bytes, chunk: int, limits: dict[str, int], default: int) -> AnswerReader:
    reader = AnswerReader(limits, default)
    for start in range(0, len(body), chunk):
        reader.feed(body[start : start + chunk])
    reader.finish()
    return reader


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, len(BODY)])
def test_an_answer_within_the_limits_reads_whole_in_pieces_of_any_size(chunk: int) -> None:
    reader = read(BODY, chunk, {}, len(BODY))
    assert reader.values == ANSWER
    assert reader.oversized == {}


@pytest.mark.parametrize("chunk", [1, 5, 64, len(BODY)])
def test_values_over_their_limit_are_measured_and_left_out(chunk: int) -> None:
    reader = read(BODY, chunk, {"logs": 100}, 30)
    left_out = ("logs", "output")
    assert reader.values == {k: v for k, v in ANSWER.items() if k not in left_out}
    assert reader.oversized == {k: len(json.dumps(ANSWER[k]).encode()) for k in left_out}


def test_logs_within_their_limit_in_characters_pass_whatever_their_json_escapes_add() -> None:
    logs = "x" * 1023 + "\n"
    within = json.dumps({"status": "succeeded", "logs": logs * 4}).encode()
    over = json.dumps({"status": "succeeded", "logs": logs * 4 + "y"}).encode()
    # The logs' JSON is longer than their 4,096 characters (each newline is two bytes there).
    reader = AnswerReader({"logs": 2 * 4096 + 2}, 10_000, text_limits={"logs": 4096})
    reader.feed(within)
    reader.finish()
    assert reader.values is not None and reader.values["logs"] == logs * 4
    assert reader.oversized == {}
    reader = AnswerReader({"logs": 2 * 4096 + 2}, 10_000, text_limits={"logs": 4096})
    reader.feed(over)
    reader.finish()
    assert reader.values is not None and "logs" not in reader.values
    assert reader.oversized == {"logs": 4097}


@pytest.mark.parametrize("body", [b'"x"', b'{"a": 1', b"[1]", b"nope", b'{"a" 1}', b""])
def test_a_body_that_is_not_a_whole_object_has_no_values_but_its_head(body: bytes) -> None:
    reader = read(body, 2, {}, 100)
    assert reader.values is None
    assert bytes(reader.head) == body


def test_an_error_answer_keeps_coglets_status_and_text() -> None:
    reader = read(b"Internal Server Error", 4, {}, 100)
    failed = answered_prediction(500, reader)
    assert failed.status == "failed"
    assert failed.error == "coglet answered HTTP 500: Internal Server Error"
    assert answered_prediction(200, read(BODY, 64, {}, len(BODY))).output == ANSWER["output"]


def test_a_log_tail_keeps_the_last_characters_after_a_marker_saying_how_many_went() -> None:
    tail = LogTail(10)
    for line in ("abc\n", "defgh\n", "ij\n"):
        tail.append(line)
    assert tail.text() == logs_marker(3, 10) + "\ndefgh\nij\n"
    tail.append("x" * 25)
    assert tail.text() == logs_marker(28, 10) + "x" * 10
    short = LogTail(10)
    short.append("ok\n")
    assert short.text() == "ok\n"


def test_long_text_is_cut_to_its_end_and_the_messages_say_the_sizes() -> None:
    assert tail_of("short", 10) == "short"
    assert tail_of("0123456789abc", 10) == logs_marker(3, 10) + "3456789abc"
    assert logs_marker(99 * 2**20, 2**20) == (
        "[replicant: the first 99.0 MB of these logs were left out; "
        "a prediction keeps the last 1.0 MB]\n"
    )
    assert "50.0 MB as JSON, over the limit of 16.0 MB" in output_too_large(50 * 2**20, 16 * 2**20)
