"""How the dashboard shows values: outputs by kind, JSON, times, and code snippets."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from jinja2 import Environment
from markdown_it import MarkdownIt
from markupsafe import Markup, escape

IMAGE = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp", ".avif"}
AUDIO = {".wav", ".mp3", ".ogg", ".flac", ".m4a", ".aac", ".opus"}
VIDEO = {".mp4", ".webm", ".mov", ".mkv"}
# Long data URIs are cut where an input is shown.
SHOWN_VALUE = 200
# Longer text is cut on a page (input, output), with a link to the whole.
LONG_TEXT = 2_000
# Code keeps values up to this long; beyond it, the page shows the code cut and links to the
# whole code (a 5 MB input would otherwise be in the page four times).
CODE_VALUE = 10_000
# A list of at least this many numbers (an embedding) is drawn collapsed, as a vector.
VECTOR = 32
# Text that reads as markdown (headings, lists, emphasis, code fences, links) is drawn as such.
MARKDOWN = re.compile(
    r"^(#{1,6} |[-*] |\d+\. |```|> )|\*\*[^*\n]+\*\*|\[[^\]\n]+\]\([^)\n]+\)", re.MULTILINE
)
# Raw HTML in the text stays text; markdown-it refuses javascript: links itself.
_markdown = MarkdownIt("commonmark", {"html": False})


def output_kind(value: Any) -> str:
    """``image``, ``audio``, ``video``, ``file`` (a link), ``text`` or ``json``."""
    if not isinstance(value, str):
        return "json"
    if value.startswith("data:"):
        mime = value[5:].split(";", 1)[0].split(",", 1)[0]
        top = mime.split("/", 1)[0]
        return top if top in ("image", "audio", "video") else "file"
    if not value.startswith(("http://", "https://")):
        return "markdown" if MARKDOWN.search(value) else "text"
    path = urlparse(value).path.lower()
    ext = path[path.rfind(".") :] if "." in path.rsplit("/", 1)[-1] else ""
    for kind, exts in (("image", IMAGE), ("audio", AUDIO), ("video", VIDEO)):
        if ext in exts:
            return kind
    return "file"


def output_items(output: Any, streaming: bool) -> list[tuple[str, Any]]:
    """(kind, value) pairs to draw: an iterator of text reads as one text, a list of files as
    one item each, an object (Cog's ``Output`` model) as ``fields``, each field's name with
    its own items, anything else as itself."""
    if output is None:
        return []
    if isinstance(output, dict) and output:
        fields = [(str(k), output_items(v, False)) for k, v in output.items()]
        # Text first (OCR's text before its boxes), the rest in the model's order.
        fields.sort(key=lambda field: not _reads_as_text(field[1]))
        return [("fields", fields)]
    if isinstance(output, list):
        if streaming and all(isinstance(v, str) and is_text(v) for v in output):
            text = "".join(output)
            return [(output_kind(text), text)]
        if is_vector(output):
            return [("vector", output)]
        if output and all(isinstance(v, dict) for v in output) and any(map(_holds_vector, output)):
            # One record a result (an embedding with its text), each field by its kind.
            return [("records", [output_items(v, False) for v in output])]
        if output and all(output_kind(v) != "json" for v in output):
            return [(output_kind(v), v) for v in output]
        return [("json", output)]
    return [(output_kind(output), output)]


def _reads_as_text(items: list[tuple[str, Any]]) -> bool:
    return bool(items) and all(kind in ("text", "markdown") for kind, _ in items)


def is_vector(value: Any) -> bool:
    """A list of numbers long enough to be drawn collapsed (an embedding)."""
    return isinstance(value, list) and len(value) >= VECTOR and all(map(_is_number, value))


def _holds_vector(record: dict[str, Any]) -> bool:
    return any(is_vector(v) for v in record.values())


def vector_summary(values: list[float], first: int = 6) -> dict[str, Any]:
    """What a collapsed vector shows: its dimensions, norm and first values."""
    norm = math.sqrt(sum(float(v) * float(v) for v in values))
    return {
        "dimensions": len(values),
        "norm": f"{norm:.4f}",
        "first": ", ".join(f"{float(v):.4f}" for v in values[:first]),
        "json": json.dumps(values),
    }


def is_text(value: str) -> bool:
    return output_kind(value) in ("text", "markdown")


def markdown(text: str) -> Markup:
    """Markdown as HTML, with any HTML in it escaped."""
    return Markup(_markdown.render(text))


def pretty(value: Any, level: int = 0) -> str:
    """Indented JSON, with a list of numbers (an embedding, a box's corner) on one line."""
    if isinstance(value, list) and value and all(_is_number(v) for v in value):
        return json.dumps(value)
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{_string(k)}: {pretty(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and value:
        return "[\n" + ",\n".join(inner + pretty(v, level + 1) for v in value) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def file_name(url: str) -> str:
    if url.startswith("data:"):
        return "download"
    return urlparse(url).path.rsplit("/", 1)[-1] or url


def brief(value: Any, limit: int = LONG_TEXT) -> Any:
    """``value`` with long data URIs and strings longer than ``limit`` cut short, for showing
    (the page links to the whole)."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > SHOWN_VALUE:
        return f"{value[:60]}... ({len(value):,} characters)"
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value):,} characters)"
    if isinstance(value, list):
        return [brief(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: brief(v, limit) for k, v in value.items()}
    return value


def is_cut(value: Any, limit: int = LONG_TEXT) -> bool:
    """Whether ``brief`` cuts anything of ``value``."""
    return bool(brief(value, limit) != value)


def cut_text(text: str) -> str:
    """An output text as a page shows it: the first ``LONG_TEXT`` characters (the page links
    to the whole)."""
    return text if len(text) <= LONG_TEXT else f"{text[:LONG_TEXT]}... ({len(text):,} characters)"


def code_input(value: Any) -> Any:
    """An input as the page's code shows it: values past ``CODE_VALUE`` characters cut (the
    whole code is a download)."""
    if isinstance(value, str) and len(value) > CODE_VALUE:
        return f"{value[:60]}... ({len(value):,} characters: download the whole code)"
    if isinstance(value, list):
        return [code_input(v) for v in value]
    if isinstance(value, dict):
        return {k: code_input(v) for k, v in value.items()}
    return value


def python_literal(value: Any, level: int = 0) -> str:
    """``value`` (JSON data) as Python source, laid out like indented JSON."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, dict) and value:
        items = [f"{_string(k)}: {python_literal(v, level + 1)}" for k, v in value.items()]
        return _block("{", items, "}", level)
    if isinstance(value, list) and value:
        return _block("[", [python_literal(v, level + 1) for v in value], "]", level)
    return json.dumps(value, ensure_ascii=False)  # numbers, strings, empty {} and []


def _string(key: Any) -> str:
    return json.dumps(str(key), ensure_ascii=False)


def _block(opening: str, items: list[str], closing: str, level: int) -> str:
    pad = "    " * (level + 1)
    return opening + "\n" + "".join(f"{pad}{item},\n" for item in items) + "    " * level + closing


def snippets(base: str, version: str, input: dict[str, Any]) -> dict[str, str]:
    """curl, Python and JavaScript code that makes the same prediction, with the input exactly
    as it was given (a data URI in full, an uploaded file by its Files API URL), so each
    runs as it stands with ``REPLICATE_API_TOKEN`` set."""
    body = {"version": version, "input": input}
    data = json.dumps(body, indent=2, ensure_ascii=False)
    inputs = json.dumps(input, indent=2, ensure_ascii=False)
    # The body goes in on stdin (a here-document): a long data URI would be beyond the
    # length of one command-line argument. No line of indented JSON reads just "JSON".
    curl = (
        f"curl -s -X POST {base}/v1/predictions \\\n"
        '  -H "Authorization: Bearer $REPLICATE_API_TOKEN" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        '  -H "Prefer: wait" \\\n'
        f"  --data-binary @- <<'JSON'\n{data}\nJSON"
    )
    python = (
        "import replicate\n\n"
        f'client = replicate.Client(base_url="{base}")  # token from REPLICATE_API_TOKEN\n'
        f'output = client.run(\n    "{version}",\n    input={python_literal(input, 1)},\n)\n'
        "print(output)"
    )
    javascript = (
        'import Replicate from "replicate";\n\n'
        f'const replicate = new Replicate({{ baseUrl: "{base}/v1" }});\n'
        f'const output = await replicate.run("{version}", {{\n'
        f"  input: {inputs.replace(chr(10), chr(10) + '  ')},\n}});\n"
        "console.log(output);"
    )
    return {"curl": curl, "python": python, "javascript": javascript}


def install_filters(env: Environment) -> None:
    """Make the helpers above available to the templates."""
    env.filters["pretty"] = pretty
    env.filters["markdown"] = markdown
    env.filters["brief"] = brief
    env.filters["file_name"] = file_name
    env.filters["cut_text"] = cut_text
    env.filters["when"] = when
    env.filters["starts_in"] = starts_in
    env.filters["plural"] = plural
    env.globals["output_items"] = output_items
    env.globals["vector_summary"] = vector_summary


def when(value: str | None) -> Markup:
    """A timestamp as a relative time (``3 minutes ago``), the exact UTC time on hover, no
    microseconds; ``-`` when there is none."""
    if not value:
        return Markup("-")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return Markup(escape(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    exact = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    stamp = moment.astimezone(UTC).isoformat(timespec="seconds")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        stamp, exact, relative(moment, datetime.now(UTC))
    )


def starts_in(value: str | None) -> str:
    """An expected start as ``in about 40 seconds`` (``any moment now`` once it is due)."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    seconds = int((moment - datetime.now(UTC)).total_seconds())
    if seconds < 2:
        return "any moment now"
    for size, unit in ((3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            return f"in about {plural(seconds // size, unit)}"
    return "any moment now"


def relative(moment: datetime, now: datetime) -> str:
    """``just now``, ``5 seconds ago``, ``1 minute ago``, ... ``3 days ago``, then the date."""
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if seconds < 2:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
        if seconds >= size:
            count = seconds // size
            if unit == "day" and count > 30:
                return moment.astimezone(UTC).strftime("%Y-%m-%d")
            return f"{plural(count, unit)} ago"
    return "just now"


def plural(count: int, word: str) -> str:
    """``1 run``, ``2 runs``."""
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"
