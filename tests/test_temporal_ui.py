"""The Temporal UI tells the truth about every prediction: in the UI the stack's Temporal dev
server serves (Debian's Chromium under Playwright), a finished prediction is found by its
search attributes and shows Completed with its summary; a failed one Failed with its error; a
canceled one Canceled.

Set DASHBOARD_SCREENSHOTS=<dir> to save the pages (docs/temporal-ui/ holds the committed one).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from playwright.sync_api import Browser, Page, expect
from temporalio.client import WorkflowFailureError

from replicant.temporal import connect
from replicant.versions import create_version, ensure_model
from tests.browser import SCREENSHOTS, WAIT_MS
from tests.conftest import LiveStack


def create(api: httpx.Client, model: str, payload: dict[str, Any], **headers: str) -> Any:
    response = api.post(f"/v1/models/{model}/predictions", json={"input": payload}, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def wait_closed(live: LiveStack, prediction_id: str) -> None:
    """Until the prediction's workflow has closed (its close event)."""
    handle = (await connect(live.settings)).get_workflow_handle(f"prediction-{prediction_id}")
    with contextlib.suppress(WorkflowFailureError):
        await handle.result(follow_runs=False)


def open_found(browser: Browser, live: LiveStack, query: str, workflow_id: str) -> Page:
    """The UI's list of workflows for ``query``, then the page of ``workflow_id`` in it."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(WAIT_MS)
    ui = live.settings.resolved_temporal_ui_url
    page.goto(f"{ui}/namespaces/{live.settings.temporal_namespace}/workflows?query={quote(query)}")
    found = page.get_by_role("link", name=workflow_id).first
    expect(found).to_be_visible()
    found.click()
    page.wait_for_url(f"**/workflows/{workflow_id}/**")
    expect(page.get_by_role("heading", name=workflow_id)).to_be_visible()
    return page


def shot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"))


def test_the_temporal_ui_shows_each_prediction_as_it_ended(
    live: LiveStack, api: httpx.Client, browser: Browser
) -> None:
    done = create(api, "replicate/hello-world", {"text": "in the UI"}, Prefer="wait")
    model = ensure_model(live.engine, "replicant", "crash")
    create_version(live.settings, live.engine, model, Path(__file__).parent / "models" / "crash")
    failed = create(api, "replicant/crash", {"message": "broke in the UI"}, Prefer="wait")
    failed = live.wait_for(failed["id"])
    assert failed["status"] == "failed"
    sleeping = create(api, "replicant/sleep", {"seconds": 60})
    live.wait_for(sleeping["id"], lambda p: p["status"] == "processing", 300)
    assert api.post(f"/v1/predictions/{sleeping['id']}/cancel").status_code == 200
    # Playwright's loop runs in this thread: Temporal's client waits in one of its own.
    with ThreadPoolExecutor(1) as waiter:
        for prediction in (done, failed, sleeping):
            waiter.submit(asyncio.run, wait_closed(live, prediction["id"])).result()

    # Found by its search attributes: Completed, with its summary.
    workflow_id = f"prediction-{done['id']}"
    query = (
        "ReplicantModel = 'replicate/hello-world' AND ReplicantStatus = 'succeeded'"
        f" AND WorkflowId = '{workflow_id}'"
    )
    page = open_found(browser, live, query, workflow_id)
    expect(page.get_by_text("Completed").first).to_be_visible()
    # The run activity's summary is on the timeline; the workflow's under User Metadata.
    expect(page.get_by_text("run replicate/hello-world on cpu").first).to_be_visible()
    shot(page, "prediction-completed")
    page.get_by_text("User Metadata").first.click()
    # The UI renders the summary's Markdown in a frame of its own.
    summary = page.frame_locator("iframe").first.get_by_text("prediction of replicate/hello-world")
    expect(summary.first).to_be_visible()
    shot(page, "prediction-summary")

    workflow_id = f"prediction-{failed['id']}"
    query = f"ReplicantStatus = 'failed' AND WorkflowId = '{workflow_id}'"
    page = open_found(browser, live, query, workflow_id)
    expect(page.get_by_text("Failed").filter(visible=True).first).to_be_visible()
    expect(page.get_by_text("broke in the UI").filter(visible=True).first).to_be_visible()
    shot(page, "prediction-failed")

    workflow_id = f"prediction-{sleeping['id']}"
    query = f"ReplicantStatus = 'canceled' AND WorkflowId = '{workflow_id}'"
    page = open_found(browser, live, query, workflow_id)
    expect(page.get_by_text("Canceled").filter(visible=True).first).to_be_visible()
    shot(page, "prediction-canceled")
