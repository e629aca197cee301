"""The dashboard's live pages and code, in Chromium against the session's live stack: a running
prediction or training follows its event stream and takes its finished state in place (no
reload), and the code snippets of a prediction run as they stand.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.browser import png, run_form, sign_in, submit_run
from tests.conftest import LiveStack

# Marks a document: a reload or any navigation would lose it.
MARK = "() => { window.stillTheSamePage = true; }"
MARKED = "() => window.stillTheSamePage === true"
# Collects what the event stream writes into the logs (not what a swap puts in their place).
WATCH_LOGS = """() => {
    window.streamedLogs = [];
    const logs = document.getElementById("logs");
    new MutationObserver(() => window.streamedLogs.push(logs.textContent))
        .observe(logs, { childList: true, characterData: true, subtree: true });
}"""


def test_a_finished_prediction_takes_its_final_state_without_a_reload(
    browser: Browser, live: LiveStack
) -> None:
    user = live.new_account("live")
    page = sign_in(browser, live, user)
    run_form(page, "replicant/sleep")
    page.fill("#in-seconds", "3")
    prediction_id = submit_run(page)
    page.evaluate(MARK)
    expect(page.locator("#logs")).to_contain_text("slept 1s")  # by the event stream
    expect(page.locator("#status")).to_have_text("succeeded")
    # The finished state, drawn by the server: output by kind, timings, buttons.
    expect(page.locator("#output pre.text-output")).to_have_text("slept for 3 seconds")
    expect(page.locator("#completed-at")).not_to_have_text("-")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.get_by_role("button", name="Share")).to_be_visible()
    expect(page.locator("#prediction[data-events]")).to_have_count(0)
    assert page.evaluate(MARKED), "the page was reloaded"
    with live.client(user) as api:
        body = api.get(f"/v1/predictions/{prediction_id}").json()
    # Shown as a relative time, the exact one (to the second) on hover.
    completed = datetime.fromisoformat(body["completed_at"]).isoformat(timespec="seconds")
    expect(page.locator("#completed-at time")).to_have_attribute("datetime", completed)
    # The swapped-in buttons work: Share leads to the public page.
    page.get_by_role("button", name="Share").click()
    expect(page.get_by_role("link", name="Public page")).to_be_visible()


def test_a_streaming_failure_shows_its_tokens_then_error_and_traceback_in_place(
    browser: Browser, live: LiveStack, slowstream: str
) -> None:
    user = live.new_account("live")
    page = sign_in(browser, live, user)
    with live.client(user) as api:
        created = api.post(
            f"/v1/models/{slowstream}/predictions",
            json={"input": {"tokens": 10, "interval": 1, "fail_after": 5}},
        ).json()
    page.goto(f"/predictions/{created['id']}")
    page.evaluate(MARK)
    expect(page.locator("#live-output")).to_contain_text("t1")  # tokens as they come
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("#error")).to_contain_text("gave up after 5 tokens")
    expect(page.locator("#logs")).to_contain_text("Traceback")
    expect(page.locator("#output pre.text-output")).to_have_text("t0 t1 t2 t3 t4 ")
    assert page.evaluate(MARKED), "the page was reloaded"


def test_a_running_training_streams_its_logs_and_shows_its_version_in_place(
    browser: Browser, live: LiveStack
) -> None:
    from tests.trainkit import (
        CorpusServer,
        client_for,
        corpus,
        new_destination,
        ngram_version,
        wait_training,
    )

    token = live.new_account("trainer")
    destination = new_destination(live, token, f"live-{os.urandom(3).hex()}")
    corpora = CorpusServer(held=True)  # the training waits for its corpus until released
    try:
        url = corpora.add("held.txt", corpus(seed=4, words=300))
        training = client_for(live, token).trainings.create(
            model="replicant/ngram",
            version=ngram_version(live),
            input={"text": url},
            destination=destination,
        )
        page = sign_in(browser, live, token)
        page.goto(f"/trainings/{training.id}")
        page.evaluate(MARK)
        expect(page.locator("#training[data-events]")).to_have_count(1)
        expect(page.locator("#status")).to_have_text(re.compile("^(starting|processing)$"))
        page.evaluate(WATCH_LOGS)
        corpora.release()
        expect(page.locator("#status")).to_have_text("succeeded")
        wait_training(training)
        expect(page.locator("#version-produced")).to_have_text(training.output["version"])
        expect(page.locator("#logs")).to_contain_text("wrote")
        expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
        assert page.evaluate(MARKED), "the page was reloaded"
        streamed = page.evaluate("() => window.streamedLogs")
        assert any("read " in text for text in streamed), streamed
    finally:
        corpora.close()


def run_snippet(
    page: Page, language: str, token: str, code: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the page's ``language`` snippet as it stands, or ``code`` (given on stdin: a long
    data URI is beyond one command-line argument), with the token in ``REPLICATE_API_TOKEN``."""
    if code is None:
        code = page.locator(f"#code-{language}").text_content() or ""
    command = ["bash"] if language == "curl" else [sys.executable, "-"]
    return subprocess.run(
        command,
        input=code,
        env={**os.environ, "REPLICATE_API_TOKEN": token},
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_snippets_of_an_uploaded_file_input_run_as_they_stand(
    browser: Browser, live: LiveStack
) -> None:
    user = live.new_account("live")
    page = sign_in(browser, live, user)
    run_form(page, "replicant/thumbnail")
    picked = {"name": "red.png", "mimeType": "image/png", "buffer": png(300, 150)}
    page.set_input_files("#in-image", files=[picked])
    page.fill("#in-width", "48")
    prediction_id = submit_run(page)
    expect(page.locator("#status")).to_have_text("succeeded")
    with live.client(user) as api:
        given = api.get(f"/v1/predictions/{prediction_id}").json()["input"]
    # The picked file went through the Files API: the input names it by its URL.
    assert re.fullmatch(rf"{re.escape(live.url)}/v1/files/[a-z0-9]+", given["image"]), given
    expect(page.locator("#code-curl")).to_contain_text(given["image"])

    ran = run_snippet(page, "curl", user)
    made = json.loads(ran.stdout or "null")
    assert made and made["status"] == "succeeded", (ran.stdout[:500], ran.stderr)
    assert made["id"] != prediction_id and made["input"] == given
    ran = run_snippet(page, "python", user)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(live.url), ran.stdout


def noise_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_long_data_uri_input_is_in_the_downloaded_code_in_full_and_runs(
    browser: Browser, live: LiveStack
) -> None:
    user = live.new_account("live")
    import base64

    # Past the 128 KiB a single command-line argument may hold.
    uri = "data:image/png;base64," + base64.b64encode(noise_png(256)).decode()
    assert len(uri) > 200_000
    with live.client(user) as api:
        made = api.post(
            "/v1/models/replicant/thumbnail/predictions",
            json={"input": {"image": uri, "width": 16}},
            headers={"Prefer": "wait"},
        ).json()
    page = sign_in(browser, live, user)
    page.goto(f"/predictions/{made['id']}")
    expect(page.locator("#status")).to_have_text("succeeded")
    # The page shows the code cut short; each language's whole code is a download.
    whole = {}
    for language in ("curl", "python", "javascript"):
        assert uri not in (page.locator(f"#code-{language}").text_content() or ""), language
        page.locator(f"details:has(#code-{language})").evaluate("d => { d.open = true; }")
        with page.expect_download() as download:
            page.locator(f"#whole-code-{language}").click()
        whole[language] = Path(download.value.path()).read_text()
        assert uri in whole[language], language
    ran = run_snippet(page, "curl", user, whole["curl"])
    again = json.loads(ran.stdout or "null")
    assert again and again["status"] == "succeeded", (ran.stdout[:500], ran.stderr)
    assert again["input"]["image"] == uri
