"""How the dashboard shows values: outputs by kind, JSON, times, and code snippets."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlparse

from jinja2 import Environment
from markdown_it import MarkdownIt
from markupsafe import Markup

IMAGE = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp", ".avif"}
AUDIO = {".wav", ".mp3", ".ogg", ".flac", ".m4a", ".aac", ".opus"}
VIDEO = {".mp4", ".webm", ".mov", ".mkv"}
# Long data URIs are cut where an input is shown (never in code, which must run as is).
SHOWN_VALUE = 200
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
        return [("fields", [(str(k), output_items(v, False)) for k, v in output.items()])]
    if isinstance(output, list):
        if streaming and all(isinstance(v, str) and is_text(v) for v in output):
            text = "".join(output)
            return [(output_kind(text), text)]
        if output and all(output_kind(v) != "json" for v in output):
            return [(output_kind(v), v) for v in output]
        return [("json", output)]
    return [(output_kind(output), output)]


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


def brief(value: Any) -> Any:
    """``value`` with long data URIs cut short, for showing an input (not for sending)."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > SHOWN_VALUE:
        return f"{value[:60]}... ({len(value)} characters)"
    if isinstance(value, list):
        return [brief(v) for v in value]
    if isinstance(value, dict):
        return {k: brief(v) for k, v in value.items()}
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
    env.globals["output_items"] = output_items
