"""coglet's wire protocol: its URLs, request bodies, answers, log lines and error texts.

Pure functions (no processes, no I/O), so each rule about what coglet says is tested alone.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from pydantic import ByteSize

from replicant.runner import CogPrediction
from replicant.runstate import TERMINAL as TERMINAL  # the statuses a run ends with

# coglet's markers (in its JSON log) that a prediction's log lines are all written.
END_MARKERS = frozenset(
    {"Prediction worker completed", "Prediction failed", "Prediction cancelled"}
)

# What coglet puts before a model's "Type: message" (repeated, in some combination).
COGLET_ERROR_PREFIX = re.compile(
    r"(?:Prediction failed|Training failed|Async prediction failed|Async training failed"
    r"|Generator iteration error): "
)
SETUP_ERROR_PREFIX = re.compile(r"(?:worker setup failed(?: \(slot [^)]*\))?|setup failed): ", re.I)
# Health states in which coglet takes (or is running) a prediction.
HEALTHY = ("READY", "BUSY")
# What coglet reports while the model's healthcheck() fails (returns False, raises or times out).
UNHEALTHY = "UNHEALTHY"
# The error of a prediction whose model process exited mid-run (as by the OOM killer).


def prediction_path(mode: str, prediction_id: str) -> str:
    """The path of a prediction (``mode`` "predict") or training (``mode`` "train")."""
    kind = "trainings" if mode == "train" else "predictions"
    return f"/{kind}/{quote(prediction_id, safe='')}"


def request_body(
    input: dict[str, Any], webhook: str | None, context: dict[str, str] | None = None
) -> dict[str, Any]:
    """The body of a prediction's PUT; with ``webhook``, coglet reports each output and log;
    ``context`` is Cog's per-request context."""
    body: dict[str, Any] = {"input": input}
    if context:
        body["context"] = context
    if webhook is not None:
        body["webhook"] = webhook
        body["webhook_events_filter"] = ["output", "logs", "completed"]
    return body


def parse_prediction(payload: dict[str, Any]) -> CogPrediction:
    """A prediction as coglet reports it (a synchronous answer or a webhook delivery)."""
    metrics = payload.get("metrics")
    return CogPrediction(
        status=str(payload.get("status") or "failed"),
        output=payload.get("output"),
        logs=str(payload.get("logs") or ""),
        error=None if payload.get("error") is None else str(payload["error"]),
        metrics=metrics if isinstance(metrics, dict) else {},
    )


def parse_answer(status: int, content: bytes) -> CogPrediction:
    """The terminal prediction out of coglet's answer to a PUT (HTTP status and body)."""
    if status == 200:
        with contextlib.suppress(ValueError):
            return parse_prediction(json.loads(content))
    if status == 422:
        with contextlib.suppress(ValueError, TypeError, KeyError, IndexError):
            detail = json.loads(content)["detail"]
            error = "; ".join(f"{d['loc'][-1]}: {d['msg']}" for d in detail)
            return CogPrediction(status="failed", error=error)
    text = content.decode("utf-8", "replace")[:500]
    return CogPrediction(status="failed", error=f"coglet answered HTTP {status}: {text}")


def rank(payload: dict[str, Any]) -> tuple[int, int, int]:
    """Orders webhook deliveries by completeness: terminal, then more output, then more logs."""
    output = payload.get("output")
    count = len(output) if isinstance(output, list) else int(output is not None)
    return (int(payload.get("status") in TERMINAL), count, len(payload.get("logs") or ""))


def explain_model_error(result: CogPrediction) -> None:
    """coglet reports a model's exception as "Prediction failed: Prediction failed: Type: msg"
    (see COGLET_ERROR_PREFIX for the other wrappings). Keep the message as the
    error (as Cog's Python server did); the logs end with the traceback (model_entry.py) and
    so with "Type: msg", which is added should they not."""
    text = result.error
    if text is None or not COGLET_ERROR_PREFIX.match(text):
        return
    while match := COGLET_ERROR_PREFIX.match(text):
        text = text[match.end() :]
    match = re.match(r"([A-Za-z_]\w*): (.*)\Z", text, re.DOTALL)
    if match is None:
        result.error = text
        return
    result.error = match.group(2) or match.group(1)
    line = text.rstrip("\n") + "\n"
    if not result.logs.endswith(line):
        separator = "" if not result.logs or result.logs.endswith("\n") else "\n"
        result.logs += separator + line


# coglet's whole error when the model's worker process died during a prediction.
WORKER_CRASHED = "Worker crashed"


def worker_died_error(oom_killed: bool, limit: int | None = None) -> str:
    """The error of a prediction whose model process died under it: killed by the kernel for
    memory when the cgroup's OOM-kill count rose (at ``limit`` bytes, the process's own
    limit, when it had one), else the likely causes."""
    if oom_killed and limit is not None:
        return (
            "The model process ran out of memory: the kernel killed it (OOM killer, SIGKILL) "
            f"at its memory limit of {human_size(limit)} (REPLICANT_MODEL_MEMORY_LIMIT[S]) during "
            "the prediction; the next prediction starts a new process"
        )
    if oom_killed:
        return (
            "The model process was killed by the kernel for running out of memory (OOM "
            "killer, SIGKILL) during the prediction; the next prediction starts a new process"
        )
    return (
        "The model process died during the prediction without an error: killed (SIGKILL, "
        "most often by the kernel for running out of memory) or crashed; the next "
        "prediction starts a new process"
    )


def setup_out_of_memory_error(limit: int) -> str:
    """The error of a model whose setup() the kernel killed at its process's memory limit."""
    return (
        "the model ran out of memory during setup: the kernel killed it (OOM killer, SIGKILL) "
        f"at its memory limit of {human_size(limit)} (REPLICANT_MODEL_MEMORY_LIMIT[S])"
    )


def human_size(size: int) -> str:
    """A byte count as people read it (``100MiB``)."""
    return ByteSize(size).human_readable()


def setup_error(setup_logs: str) -> str:
    """The model's exception out of coglet's "worker setup failed: ... setup failed: X"."""
    text = setup_logs.strip()
    while match := SETUP_ERROR_PREFIX.match(text):
        text = text[match.end() :]
    return text or setup_logs.strip()


def unhealthy_error(body: Any) -> str:
    """What a model whose healthcheck() failed is told, from coglet's /health-check body."""
    detail = body.get("user_healthcheck_error") if isinstance(body, dict) else None
    reason = str(detail or "healthcheck() did not pass").removeprefix("Healthcheck failed: ")
    return f"The model reported itself unhealthy: {reason}"


def health(body: Any) -> str | None:
    """The status in coglet's /health-check body (None when it is not one)."""
    if not isinstance(body, dict) or body.get("status") is None:
        return None
    return str(body["status"])


@dataclass(frozen=True)
class LogLine:
    """A line of coglet's output: readable ``text``, and the JSON log record's fields when
    the line is about a prediction (``prediction_id`` in them)."""

    text: str
    fields: dict[str, Any] | None = None
    # A line the model's setup() printed.
    setup_print: str | None = None


def parse_log_line(line: str) -> LogLine:
    """Read one line of coglet's output (JSON log records, or anything a model prints)."""
    record: Any = None
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
    if not isinstance(record, dict):
        return LogLine(line)
    fields = record.get("fields")
    text = _readable(record)
    if not isinstance(fields, dict) or "prediction_id" not in fields:
        if isinstance(fields, dict) and _printed_in_setup(record.get("target"), fields):
            return LogLine(text, setup_print=str(fields.get("message", "")))
        return LogLine(text)
    return LogLine(text, fields)


def _printed_in_setup(target: object, fields: dict[str, Any]) -> bool:
    """Whether a record of no prediction is a line the model printed (in setup(): coglet
    writes it as ``coglet::user``, or as ``coglet::setup`` with its ``source``; it may come
    after the record that setup completed)."""
    return target == "coglet::user" or (target == "coglet::setup" and "source" in fields)


def _readable(record: dict[str, Any]) -> str:
    fields = dict(record.get("fields") or {})
    message = str(fields.pop("message", ""))
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if k != "source")
    return f"[{record.get('target', '')}] {message} {extra}".rstrip()
