"""How the dashboard draws values: output kinds, markdown, the Run form (no browser needed)."""

from __future__ import annotations

import ast
import json
import re
from html import unescape as html_unescape
from pathlib import Path
from typing import Any

import pytest

from api.dashboard.forms import form_fields, output_type
from api.dashboard.render import markdown, output_items, output_kind, snippets, vector_summary
from api.dashboard.web import templates


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("hello world", "text"),
        ("# Title\n\nsome *text*", "markdown"),
        ("- one\n- two", "markdown"),
        ("see [docs](https://example.com)", "markdown"),
        ("https://host/files-signed/1/sig/out/thumbnail.png", "image"),
        ("https://host/x/voice.WAV", "audio"),
        ("https://host/x/clip.mp4?sig=1", "video"),
        ("https://host/x/weights.tar", "file"),
        ("data:image/png;base64,AAAA", "image"),
        ("data:application/zip;base64,AAAA", "file"),
        ({"a": 1}, "json"),
        (3.5, "json"),
    ],
)
def test_output_kind(value: object, kind: str) -> None:
    assert output_kind(value) == kind


def test_streamed_text_reads_as_one_text_and_files_as_items() -> None:
    assert output_items([" the", " cat"], streaming=True) == [("text", " the cat")]
    assert output_items(["a.png", "b"], streaming=False) == [("text", "a.png"), ("text", "b")]
    urls = ["https://h/a.png", "https://h/b.wav"]
    assert output_items(urls, streaming=False) == [("image", urls[0]), ("audio", urls[1])]
    assert output_items([1, 2], streaming=False) == [("json", [1, 2])]
    assert output_items(None, streaming=False) == []


def test_an_object_output_is_drawn_field_by_field() -> None:
    # The OCR model's output: its text reads as text, its lines as JSON, its boxes' corners
    # (and an embedding's floats) one list a line.
    ocr = {"text": "HELLO", "lines": [{"text": "HELLO", "box": [[1.5, 2], [3, 4]]}]}
    assert output_items({**ocr, "voice": "https://h/a.wav", "none": None}, False) == [
        (
            "fields",
            [
                ("text", [("text", "HELLO")]),
                ("lines", [("json", ocr["lines"])]),
                ("voice", [("audio", "https://h/a.wav")]),
                ("none", []),
            ],
        )
    ]
    parts: Any = templates.env.get_template("parts.html").module
    html = str(parts.show(ocr, False))
    text = r'<h3 class="output-field">text</h3>\s*<pre class="text-output">HELLO</pre>'
    assert re.search(text, html)
    assert "[1.5, 2]" in html and "[3, 4]" in html
    (lines,) = re.findall(r'<pre class="json">(.*?)</pre>', html, re.S)
    assert json.loads(html_unescape(lines)) == ocr["lines"]


def test_markdown_escapes_html_and_refuses_script_links() -> None:
    html = markdown("**bold** <script>alert(1)</script> [x](javascript:alert(1))")
    assert "<strong>bold</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'href="javascript:' not in html


def test_form_fields_follow_cogs_input_schema() -> None:
    schema = {
        "components": {
            "schemas": {
                "Input": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "uri", "x-order": 0},
                        "steps": {
                            "type": "integer",
                            "default": 4,
                            "minimum": 1,
                            "maximum": 50,
                            "x-order": 1,
                        },
                        "scale": {"type": "number", "default": 0.5, "x-order": 2},
                        "fast": {"type": "boolean", "default": True, "x-order": 3},
                        "mode": {"allOf": [{"$ref": "#/components/schemas/mode"}], "x-order": 4},
                        "words": {"type": "array", "items": {"type": "string"}, "x-order": 5},
                        "key": {
                            "type": "string",
                            "format": "password",
                            "x-cog-secret": True,
                            "writeOnly": True,
                            "x-order": 6,
                        },
                    },
                },
                "mode": {"title": "mode", "enum": ["a", "b"], "type": "string"},
            }
        }
    }
    fields = {f.name: f for f in form_fields(schema)}
    assert list(fields) == ["image", "steps", "scale", "fast", "mode", "words", "key"]
    assert fields["image"].kind == "file" and fields["image"].required
    assert (fields["steps"].kind, fields["steps"].minimum, fields["steps"].maximum) == (
        "integer",
        1,
        50,
    )
    assert fields["steps"].value == "4"
    assert fields["scale"].kind == "number" and fields["fast"].kind == "checkbox"
    assert fields["mode"].kind == "select" and fields["mode"].choices == ["a", "b"]
    assert fields["words"].kind == "list" and fields["words"].item_kind == "text"
    assert fields["key"].kind == "password"


def test_snippets_carry_the_input_exactly_as_valid_code() -> None:
    given = {
        "text": 'it\'s "quoted"\nJSON',  # a line "JSON" would end curl's here-document
        "image": "data:image/png;base64," + "A" * 500,
        "fast": True,
        "seed": None,
        "sizes": [1, 2.5, {"deep": False}],
        "options": {},
    }
    code = snippets("http://h:8000", "o/m:v1", given)
    curl = code["curl"]
    assert curl.startswith("curl -s -X POST http://h:8000/v1/predictions")
    body = curl.split("<<'JSON'\n", 1)[1]
    assert body.endswith("\nJSON") and body.count("\nJSON\n") == 0
    assert json.loads(body.removesuffix("\nJSON")) == {"version": "o/m:v1", "input": given}
    call = next(
        n
        for n in ast.walk(ast.parse(code["python"]))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "run"
    )
    assert [ast.literal_eval(a) for a in call.args] == ["o/m:v1"]
    assert {k.arg: ast.literal_eval(k.value) for k in call.keywords} == {"input": given}
    javascript = code["javascript"]
    assert 'baseUrl: "http://h:8000/v1"' in javascript
    inputs = javascript.split("input: ", 1)[1].rsplit(",\n});", 1)[0]
    assert json.loads(inputs) == given


@pytest.mark.parametrize(
    ("target", "safe"),
    [
        ("/predictions?source=web", "/predictions?source=web"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("", "/"),
    ],
)
def test_sign_in_only_returns_to_this_site(target: str, safe: str) -> None:
    from api.dashboard.pages import safe_next

    assert safe_next(target) == safe


async def test_form_input_types_what_the_form_sends() -> None:
    from starlette.datastructures import FormData

    from api.dashboard.forms import Field, form_input, form_values

    fields = [
        Field("csrf", "csrf", "text"),  # an input may share a name with the form's own fields
        Field("steps", "steps", "integer"),
        Field("scale", "scale", "number"),
        Field("fast", "fast", "checkbox"),
        Field("slow", "slow", "checkbox"),
        Field("mode", "mode", "select", choices=[1, 2]),
        Field("words", "words", "list", item_kind="integer"),
        Field("prompt", "prompt", "text"),
        Field("left_out", "left_out", "text"),
    ]
    form = FormData(
        [
            ("csrf", "session-token"),
            ("in-csrf", "model input"),
            ("in-steps", " 5 "),
            ("in-scale", "0.25"),
            ("in-fast", "on"),
            ("in-mode", "2"),
            ("in-words", "1\n2\n\n3"),
            ("in-prompt", "  spaced  "),
            ("in-left_out", ""),
        ]
    )

    async def no_files(_: object) -> str:
        raise AssertionError("no file was picked")

    assert await form_input(fields, form, no_files) == {
        "csrf": "model input",
        "steps": 5,
        "scale": 0.25,
        "fast": True,
        "slow": False,
        "mode": 2,
        "words": [1, 2, 3],
        "prompt": "  spaced  ",
    }
    assert form_values(form)["steps"] == " 5 " and "session-token" not in form_values(form).values()


def test_an_api_429_reaches_the_browser_with_its_retry_after(tmp_path: Path) -> None:
    """A page over a rate limit (the page's own, by address, or its API calls', by account)
    says so as a page, with the API's Retry-After."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from replicant.accounts import create_account
    from replicant.db import make_engine
    from replicant.settings import Settings

    settings = Settings(data_dir=tmp_path, rate_limit_default="4/minute")
    app = create_app(settings)
    engine = make_engine(settings.resolved_database_url)
    _, token = create_account(engine, "limited")
    engine.dispose()
    with TestClient(app, follow_redirects=False) as browser:
        csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/signin").text)
        assert csrf is not None
        files = {"csrf": (None, csrf[1]), "token": (None, token)}
        assert browser.post("/signin", files=files).status_code == 303
        statuses = [browser.get("/account").status_code for _ in range(4)]
        assert statuses[0] == 200 and statuses[-1] == 429, statuses
        limited = browser.get("/account")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert "text/html" in limited.headers["content-type"]


def test_inputs_show_long_data_uris_cut_short() -> None:
    from api.dashboard.render import LONG_TEXT, brief, is_cut

    uri = "data:text/plain;base64," + "A" * 1000
    shown = brief({"text": uri, "files": [uri], "n": 3, "url": "https://h/" + "a" * 300})
    assert shown["text"].endswith("... (1,023 characters)") and len(shown["text"]) < 100
    assert shown["files"] == [shown["text"]] and shown["n"] == 3
    assert shown["url"] == "https://h/" + "a" * 300
    # Any text past LONG_TEXT is cut too; the page links to the whole input.
    long = brief({"prompt": "word " * 1_000_000})["prompt"]
    assert long.endswith("... (5,000,000 characters)") and len(long) < LONG_TEXT + 50
    assert is_cut({"prompt": "word " * 1_000}) and not is_cut({"prompt": "short"})


def test_a_choices_input_keeps_its_own_description() -> None:
    # Cog puts the choices in a schema of their own, whose description is pydantic's.
    schema = {
        "components": {
            "schemas": {
                "Input": {
                    "properties": {
                        "voice": {
                            "allOf": [{"$ref": "#/components/schemas/voice"}],
                            "description": "The voice to speak with",
                            "default": "joe",
                            "x-order": 0,
                        }
                    }
                },
                "voice": {
                    "title": "voice",
                    "description": "An enumeration.",
                    "enum": ["joe", "amy"],
                    "type": "string",
                },
                "Output": {"type": "string", "format": "uri"},
            }
        }
    }
    (voice,) = form_fields(schema)
    assert (voice.kind, voice.choices, voice.default) == ("select", ["joe", "amy"], "joe")
    assert voice.description == "The voice to speak with"
    assert output_type(schema) == "file"


def test_output_types_read_as_words() -> None:
    def typed(output: dict[str, Any]) -> str:
        return output_type({"components": {"schemas": {"Output": output}}})

    iterator = {"type": "array", "items": {"type": "string"}, "x-cog-array-type": "iterator"}
    assert typed(iterator) == "iterator of string"
    assert typed({"type": "array", "items": {"type": "object"}}) == "list of object"
    ocr = {"type": "object", "properties": {"text": {}, "lines": {}}}
    assert typed(ocr) == "object (text, lines)"


def test_vectors_are_collapsed_and_text_fields_come_first() -> None:
    embedding = [0.1] * 384
    results = [{"text": "a cat", "embedding": embedding}, {"text": "a dog", "embedding": embedding}]
    (records,) = output_items(results, streaming=False)
    assert records[0] == "records"
    assert records[1][0] == [
        ("fields", [("text", [("text", "a cat")]), ("embedding", [("vector", embedding)])])
    ]
    assert output_items(embedding, streaming=False) == [("vector", embedding)]
    summary = vector_summary(embedding)
    assert (summary["dimensions"], summary["norm"]) == (384, f"{(0.01 * 384) ** 0.5:.4f}")
    assert (
        summary["first"].startswith("0.1000, 0.1000") and json.loads(summary["json"]) == embedding
    )
    parts: Any = templates.env.get_template("parts.html").module
    html = str(parts.show(results, False))
    assert "384 dimensions" in html and html.count("Copy vector") == 2
    # OCR's output lists its boxes before its text: the text is drawn first.
    boxes_first = {"lines": [{"text": "HI", "box": [[0, 0], [1, 1]]}], "text": "HI"}
    (fields,) = output_items(boxes_first, streaming=False)
    assert [name for name, _ in fields[1]] == ["text", "lines"]


def test_times_are_relative_with_the_exact_time_on_hover_and_counts_agree() -> None:
    from datetime import UTC, datetime, timedelta

    from api.dashboard.render import plural, relative, when

    html = str(when("2026-11-30T09:11:02.977002Z"))
    assert 'datetime="2026-11-30T09:11:02+00:00"' in html
    assert 'title="2026-11-30 09:11:02 UTC"' in html and "977002" not in html
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    assert relative(now - timedelta(seconds=1), now) == "just now"
    assert relative(now - timedelta(seconds=90), now) == "1 minute ago"
    assert relative(now - timedelta(hours=5), now) == "5 hours ago"
    assert relative(now - timedelta(days=90), now) == "2026-09-08"
    assert str(when(None)) == "-"
    assert (plural(1, "run"), plural(0, "run"), plural(1234, "run")) == (
        "1 run",
        "0 runs",
        "1,234 runs",
    )


def test_code_on_the_page_cuts_values_the_download_keeps() -> None:
    from api.dashboard.downloads import whole_output
    from api.dashboard.render import CODE_VALUE, code_input

    given = {"text": "x" * (CODE_VALUE + 1), "n": 2, "short": "y" * CODE_VALUE}
    shown = code_input(given)
    assert shown["text"].endswith("characters: download the whole code)")
    assert shown["n"] == 2 and shown["short"] == given["short"]
    assert len(snippets("http://h", "o/m:v", shown)["curl"]) < 2 * CODE_VALUE
    assert whole_output(["a", "b"], True) == ("ab", "text/plain; charset=utf-8", "txt")
    assert whole_output({"a": 1}, False)[1:] == ("application/json", "json")


def test_tweak_fills_the_form_with_a_predictions_input() -> None:
    from api.dashboard.forms import Field, input_values

    fields = [
        Field("prompt", "prompt", "text"),
        Field("steps", "steps", "integer"),
        Field("fast", "fast", "checkbox"),
        Field("slow", "slow", "checkbox"),
        Field("words", "words", "list", item_kind="text"),
        Field("image", "image", "file"),
        Field("mode", "mode", "select", choices=["a", "b"]),
    ]
    given = {
        "prompt": "a cat",
        "steps": 4,
        "fast": True,
        "slow": False,
        "words": ["x", "y"],
        "image": "https://h/v1/files/f1",
        "mode": "b",
    }
    assert input_values(fields, given) == {
        "prompt": "a cat",
        "steps": "4",
        "fast": "on",
        "words": "x\ny",
        "mode": "b",
    }
