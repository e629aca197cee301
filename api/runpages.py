"""What the HTML pages of a prediction and a training share."""

from __future__ import annotations

import html
import json
from typing import Any

from fastapi import Request


def wants_html(request: Request) -> bool:
    """Whether the client asked for HTML before JSON (a browser)."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept.split("text/html")[0]


def json_block(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def times_list(view: dict[str, Any]) -> str:
    """The created/started/completed times of a prediction or training page."""
    return "".join(
        f"<dt>{label}</dt><dd>{html.escape(view.get(key) or '-')}</dd>"
        for label, key in (
            ("Created", "created_at"),
            ("Started", "started_at"),
            ("Completed", "completed_at"),
        )
    )
