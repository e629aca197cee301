"""Process logging: one JSON object (or one key=value line) per record, on stderr.

Every record logged while a Temporal activity runs carries its workflow id and, for a
prediction or a training, that id (``prediction_id`` / ``training_id``), whichever logger
wrote it: the filter reads ``temporalio.activity.info()``. Traced, a record made within a
span also carries its ``trace_id``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

from temporalio import activity

from replicant import tracing

# Workflow ids are "<kind>-<id>" (PredictionWorkflow: prediction-<id>).
ID_FIELDS = {"prediction": "prediction_id", "training": "training_id"}
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class TemporalContext(logging.Filter):
    """Adds the workflow id (and prediction or training id) of the running activity."""

    def filter(self, record: logging.LogRecord) -> bool:
        workflow_id: str | None = None
        if activity.in_activity():
            info = activity.info()
            workflow_id = info.workflow_id
            record.activity = info.activity_type
            record.attempt = info.attempt
        else:
            # workflow.logger and activity.logger attach their context as a dict.
            context = getattr(record, "temporal_workflow", None)
            if isinstance(context, dict):
                workflow_id = context.get("workflow_id")
        trace_id = tracing.trace_id()  # traced (replicant/tracing.py): the run's trace
        if trace_id is not None:
            record.trace_id = trace_id
        if workflow_id:
            record.workflow_id = workflow_id
            kind, _, ident = workflow_id.partition("-")
            if kind in ID_FIELDS and ident:
                setattr(record, ID_FIELDS[kind], ident)
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """key=value lines, with the same context fields as the JSON lines."""

    def __init__(self) -> None:
        super().__init__("time=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for key in ("workflow_id", *ID_FIELDS.values(), "trace_id"):
            if hasattr(record, key):
                line += f" {key}={getattr(record, key)}"
        return line


def configure_logging(level: str, fmt: Literal["json", "text"]) -> logging.Handler:
    """Route every logger (uvicorn's and Temporal's included) to one stderr handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TemporalContext())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # One line per HTTP call to a model process is noise, not a log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return handler
