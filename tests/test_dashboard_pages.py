"""The dashboard as clear as Replicate's, in Chromium against the session's live stack: pages
of large inputs and outputs stay small with the whole a download away, vectors collapsed,
error pages of the signed-in user, relative times, tweak, copy, the schema and readme, and a
GPU model that runs on the CPU says so.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import insert, update

from replicant.ids import new_id
from replicant.tables import Model, Prediction, Training
from replicant.timeutil import utcnow
from tests.browser import (
    new_page,
    png,
    private_model,
    run_form,
    shot,
    sign_in,
    submit_run,
)
from tests.conftest import LiveStack
from tests.deploykit import new_deployment

MB = 1_000_000


@pytest.fixture(scope="module")
def user(live: LiveStack) -> str:
    return live.new_account("clear")


def username(live: LiveStack, token: str) -> str:
    with live.client(token) as api:
        name: str = api.get("/v1/account").json()["username"]
    return name


def finished(live: LiveStack, token: str, model: str, input: Any, output: Any) -> str:
    """A succeeded prediction of ``model`` as the read model holds it (the page draws what the
    API answers); its id. Made from the web, so the stack's short retention leaves it be."""
    with live.client(token) as api:
        version = api.get(f"/v1/models/{model}").json()["latest_version"]["id"]
    now = utcnow()
    row = {
        "id": new_id(),
        "owner": username(live, token),
        "model": model,
        "version": version,
        "source": "web",
        "status": "succeeded",
        "input": input,
        "output": output,
        "logs": "done\n",
        "created_at": now - timedelta(seconds=3),
        "started_at": now - timedelta(seconds=2),
        "completed_at": now - timedelta(seconds=1),
    }
    with live.engine.begin() as conn:
        conn.execute(insert(Prediction), [row])
    return str(row["id"])


def downloaded(page: Page, selector: str) -> str:
    with page.expect_download() as download:
        page.locator(selector).click()
    return Path(download.value.path()).read_text()


def height(page: Page) -> int:
    return int(page.evaluate("() => document.documentElement.scrollHeight"))


def test_a_5_mb_input_and_output_make_a_page_under_1_mb_with_the_wholes_a_click_away(
    browser: Browser, live: LiveStack, user: str
) -> None:
    text = "word " * MB  # 5 MB
    prediction_id = finished(live, user, "replicate/hello-world", {"text": text}, "hello " + text)
    page = sign_in(browser, live, user)
    response = page.goto(f"/predictions/{prediction_id}")
    assert response is not None and response.status == 200
    assert len(response.body()) < MB
    expect(page.locator("#input")).to_contain_text("(5,000,000 characters)")
    expect(page.locator("#output")).to_contain_text("(5,000,006 characters)")
    assert json.loads(downloaded(page, "#whole-input")) == {"text": text}
    assert downloaded(page, "#whole-output") == "hello " + text
    curl = downloaded(page, "#whole-code-curl")
    body = curl.split("<<'JSON'\n", 1)[1].removesuffix("\nJSON")
    assert json.loads(body)["input"] == {"text": text}
    # The list of predictions shows the prediction without its input.
    listed = page.goto("/predictions")
    assert listed is not None and len(listed.body()) < MB

    # A training's page cuts its input the same way.
    training_id = new_id()
    row = {
        "id": training_id,
        "owner": username(live, user),
        "model": "replicant/ngram",
        "version": "v",
        "destination": "replicant/ngram",
        "status": "failed",
        "input": {"text": text},
        "error": "no corpus",
        "created_at": utcnow(),
    }
    with live.engine.begin() as conn:
        conn.execute(insert(Training), [row])
    response = page.goto(f"/trainings/{training_id}")
    assert response is not None and response.status == 200 and len(response.body()) < MB
    assert json.loads(downloaded(page, "#whole-input")) == {"text": text}


def test_an_embeddings_page_shows_vectors_collapsed_to_copy_or_download(
    browser: Browser, live: LiveStack, user: str
) -> None:
    texts = ["a cat sits on the mat", "a dog runs in the park", "the stock market fell"]
    vectors = [[((i * 7 + j) % 13 - 6) / 40 for j in range(384)] for i in range(len(texts))]
    output = [{"text": t, "embedding": v} for t, v in zip(texts, vectors, strict=True)]
    prediction_id = finished(live, user, "replicant/embeddings", {"texts": texts}, output)
    page = sign_in(browser, live, user)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.goto(f"/predictions/{prediction_id}")
    expect(page.locator(".vector")).to_have_count(3)
    expect(page.locator(".vector").first).to_contain_text("384 dimensions")
    assert height(page) < 3000, height(page)
    shot(page, "prediction-embeddings")
    page.get_by_role("button", name="Copy vector").nth(1).click()
    expect(page.locator(".vector button.copy.copied")).to_have_count(1)
    assert json.loads(page.evaluate("() => navigator.clipboard.readText()")) == vectors[1]
    assert json.loads(downloaded(page, ".vector >> nth=2 >> a[download]")) == vectors[2]
    # Unfolded, a vector shows every value.
    page.locator(".vector details summary").first.click()
    expect(page.locator(".vector details pre").first).to_be_visible()


def test_ocr_text_comes_before_its_boxes(browser: Browser, live: LiveStack, user: str) -> None:
    lines = [{"text": "HELLO", "confidence": 0.99, "box": [[1, 2], [30, 2], [30, 9], [1, 9]]}]
    output = {"lines": lines, "text": "HELLO"}
    prediction_id = finished(live, user, "replicant/ocr", {"image": "https://h/x.png"}, output)
    page = sign_in(browser, live, user)
    page.goto(f"/predictions/{prediction_id}")
    assert page.locator("h3.output-field").all_inner_texts() == ["text", "lines"]


def test_image_inputs_are_previewed(browser: Browser, live: LiveStack, user: str) -> None:
    # A file picked in the Run form (through the Files API) ...
    page = sign_in(browser, live, user)
    run_form(page, "replicant/thumbnail")
    picked = {"name": "red.png", "mimeType": "image/png", "buffer": png(300, 150)}
    page.set_input_files("#in-image", files=[picked])
    page.fill("#in-width", "32")
    submit_run(page)
    expect(page.locator("#status")).to_have_text("succeeded")
    natural = "img => img.complete && img.naturalWidth > 0"
    preview = page.locator(".input-image img")
    page.wait_for_function(natural, arg=preview.element_handle())
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [300, 150]
    # ... and a data URI sent through the API.
    uri = "data:image/png;base64," + base64.b64encode(png(40, 20)).decode()
    with live.client(user) as api:
        made = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": uri, "width": 16}},
            headers={"Prefer": "wait"},
        ).json()
    page.goto(f"/predictions/{made['id']}")
    page.wait_for_function(natural, arg=preview.element_handle())
    assert preview.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [40, 20]


def test_error_pages_are_pages_of_the_signed_in_user(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = sign_in(browser, live, user)
    name = username(live, user)
    for path in ("/predictions/nosuchprediction", "/no/such/page"):
        response = page.goto(path)
        assert response is not None and response.status == 404
        assert "text/html" in response.headers["content-type"]
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name=name)).to_be_visible()
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    shot(page, "not-found")
    # An API client asking the same gets problem+json.
    answer = httpx.get(f"{live.url}/no/such/page", headers={"Accept": "application/json"})
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["status"] == 404


def test_times_are_relative_with_the_exact_time_on_hover(
    browser: Browser, live: LiveStack, user: str
) -> None:
    prediction_id = finished(live, user, "replicate/hello-world", {"text": "t"}, "hello t")
    page = sign_in(browser, live, user)
    page.goto(f"/predictions/{prediction_id}")
    created = page.locator("#timings time").first
    expect(created).to_have_text(re.compile(r"^\d+ seconds? ago$|^just now$"))
    expect(created).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    for path in (f"/predictions/{prediction_id}", "/predictions", "/models/replicate/hello-world"):
        page.goto(path)
        main = page.locator("main").inner_text()
        assert not re.search(r"\d\d:\d\d:\d\d\.\d+", main), path  # no microseconds


def test_started_shows_while_the_prediction_runs(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicant/sleep")
    page.fill("#in-seconds", "4")
    submit_run(page)
    expect(page.locator("#logs")).to_contain_text("slept 1s")
    expect(page.locator("#status")).to_have_text("processing")
    expect(page.locator("#started-at time")).to_have_attribute("title", re.compile("UTC"))
    expect(page.locator("#status")).to_have_text("succeeded")


def test_counts_read_one_run_and_a_gpu_model_says_it_runs_on_the_cpu(
    browser: Browser, live: LiveStack, user: str
) -> None:
    owner, name = private_model(live, user, "gpu", hardware="gpu-t4")
    with live.engine.begin() as conn:
        conn.execute(update(Model).where(Model.name == name).values(run_count=1))
    page = sign_in(browser, live, user)
    page.fill("#q", name)
    page.get_by_role("button", name="Search").click()
    expect(page.locator(".model .meta")).to_have_text("private · 1 run")
    page.goto(f"/models/{owner}/{name}")
    expect(page.locator("main .meta").first).to_contain_text("1 run · hardware Nvidia T4 GPU")
    expect(page.locator("#runs-on-cpu")).to_contain_text("runs on the CPU")


def test_tweak_opens_the_form_filled_with_the_input_and_copy_takes_the_output(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = sign_in(browser, live, user)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    run_form(page, "replicate/hello-world")
    page.fill("#in-text", "first try")
    submit_run(page)
    expect(page.locator("#output")).to_contain_text("hello first try")
    page.get_by_role("button", name="Copy output").click()
    expect(page.locator("#copy-output.copied")).to_be_visible()
    assert page.evaluate("() => navigator.clipboard.readText()") == "hello first try"

    page.get_by_role("link", name="Tweak").click()
    expect(page.locator("#tweaking")).to_be_visible()
    expect(page.locator("#in-text")).to_have_value("first try")
    page.fill("#in-text", "second try")
    submit_run(page)
    expect(page.locator("#output")).to_contain_text("hello second try")


def test_the_model_page_shows_its_schema_and_readme(
    browser: Browser, live: LiveStack, user: str
) -> None:
    owner, name = private_model(live, user, "documented")
    with live.client(user) as api:
        readme = "# Documented\n\nIt does **one** thing."
        patched = api.patch(f"/v1/models/{owner}/{name}", json={"readme": readme})
        assert patched.status_code == 200, patched.text
    page = sign_in(browser, live, user)
    page.goto(f"/models/{owner}/{name}")
    expect(page.locator("#readme h1")).to_have_text("Documented")
    expect(page.locator("#readme strong")).to_have_text("one")

    page.goto("/models/replicant/sleep")
    row = page.locator("#schema tbody tr", has_text="seconds")
    expect(row).to_contain_text("number")
    expect(row).to_contain_text("How long to sleep, in seconds")
    expect(row).to_contain_text("max 3600")
    expect(page.locator("#output-type")).to_have_text("string")
    shot(page, "model-schema")


def test_favicon_aligned_deployment_settings_and_a_spaced_sign_in_button(
    browser: Browser, live: LiveStack
) -> None:
    page = new_page(browser, live)
    page.goto("/signin")
    gap = page.evaluate(
        """() => document.querySelector("button[type=submit]").getBoundingClientRect().top
                 - document.getElementById("token").getBoundingClientRect().bottom"""
    )
    assert gap >= 12, gap
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert icon is not None
    for path in (icon, "/favicon.ico"):
        answer = page.request.get(path)
        assert answer.status == 200 and answer.headers["content-type"] == "image/svg+xml"

    token = live.new_account("aligner")
    with live.client(token) as api:
        new_deployment(api)
    page = sign_in(browser, live, token)
    page.goto("/deployments")
    boxes = page.evaluate(
        """() => [...document.querySelectorAll("section.card form.filters")[0]
                    .querySelectorAll("input:not([type=hidden]), select, button")]
                 .map(e => { const r = e.getBoundingClientRect(); return [r.top, r.bottom]; })"""
    )
    assert len(boxes) == 4 and len({round(b[0]) for b in boxes}) == 1, boxes
    assert len({round(b[1]) for b in boxes}) == 1, boxes
