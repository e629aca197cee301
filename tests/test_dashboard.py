"""The web dashboard in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium,
installed by `make test`), against the session's live stack.

Set DASHBOARD_SCREENSHOTS=<dir> to save screenshots of the main pages there (docs/dashboard/
holds the committed ones).
"""

from __future__ import annotations

import os
import re

import pytest
from playwright.sync_api import Browser, expect

from tests.browser import new_page, png, run_form, shot, sign_in, submit_run
from tests.conftest import LiveStack
from tests.deploykit import new_deployment


@pytest.fixture(scope="module")
def user(live: LiveStack) -> str:
    return live.new_account("dash")


def test_sign_in_lists_models_searches_and_signs_out(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = new_page(browser, live)
    page.goto("/signin")
    page.fill("#token", "r8_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#token-error")).to_have_text("That token is not valid")

    page = sign_in(browser, live, user)
    cookie = next(c for c in page.context.cookies() if c["name"] == "replicant_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    models = page.locator(".model h2")
    expect(models.filter(has_text="replicate/hello-world")).to_be_visible()
    expect(models.filter(has_text="replicant/thumbnail")).to_be_visible()
    shot(page, "models")

    page.fill("#q", "thumb")
    page.get_by_role("button", name="Search").click()
    expect(models).to_have_count(1)
    expect(models).to_have_text("replicant/thumbnail")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin$"))
    page.goto("/predictions")
    expect(page).to_have_url(re.compile(r"/signin\?next=/predictions$"))


def test_hello_world_runs_from_the_form(browser: Browser, live: LiveStack, user: str) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicate/hello-world")
    expect(page.locator("label[for=in-text]")).to_contain_text("text")
    expect(page.locator("main .meta").first).to_contain_text("hardware CPU")
    shot(page, "model")
    page.fill("#in-text", "dashboard")
    prediction_id = submit_run(page)
    expect(page.locator("#status")).to_have_text("succeeded")
    expect(page.locator("#output")).to_contain_text("hello dashboard")
    # The code snippets make the same prediction.
    expect(page.locator("#code-curl")).to_contain_text('"text": "dashboard"')
    expect(page.locator("#code-python")).to_contain_text("replicate/hello-world:")
    link = page.get_by_role("link", name="Workflow in the Temporal UI")
    expect(link).to_have_attribute("href", re.compile(f"/workflows/prediction-{prediction_id}$"))
    shot(page, "prediction")
    with live.client(user) as api:
        body = api.get(f"/v1/predictions/{prediction_id}").json()
    assert body["output"] == "hello dashboard" and body["source"] == "web"
    # The list's filters are the API's.
    page.goto("/predictions")
    page.select_option("select[name=source]", "web")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("link", name=prediction_id)).to_be_visible()
    page.select_option("select[name=source]", "api")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"source=api"))
    expect(page.get_by_role("link", name=prediction_id)).to_have_count(0)


def test_bad_input_shows_the_fields_error(browser: Browser, live: LiveStack, user: str) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicant/sleep")
    expect(page.locator("#in-seconds")).to_have_attribute("max", "3600")
    # Past the browser's own check, so the API's answer is what shows.
    page.locator("form.run").evaluate("form => { form.noValidate = true; }")
    page.fill("#in-seconds", "5000")
    page.get_by_role("button", name="Run").click()
    error = page.locator("#err-seconds")
    expect(error).to_contain_text("3600")
    expect(page.locator("#in-seconds")).to_have_value("5000")
    expect(page.locator(".field.invalid #in-seconds")).to_be_visible()
    shot(page, "invalid-input")
    # Corrected, the same form runs.
    page.fill("#in-seconds", "0")
    submit_run(page)
    expect(page.locator("#status")).to_have_text("succeeded")
    expect(page.locator("#output")).to_contain_text("slept for 0 seconds")


def test_thumbnail_of_an_uploaded_image_is_shown(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicant/thumbnail")
    page.set_input_files(
        "#in-image", files=[{"name": "red.png", "mimeType": "image/png", "buffer": png(300, 150)}]
    )
    page.fill("#in-width", "64")
    submit_run(page)
    expect(page.locator("#status")).to_have_text("succeeded")
    image = page.locator("img.output-image")
    expect(image).to_be_visible()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 32]
    shot(page, "prediction-image")


def test_sleep_logs_arrive_live_and_cancel_stops_it(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicant/sleep")
    page.fill("#in-seconds", "6")
    prediction_id = submit_run(page)
    # Marks this document: a reload would lose it, so the logs below came by the event stream.
    page.evaluate("() => { window.stillTheSamePage = true; }")
    expect(page.locator("#logs")).to_contain_text("slept 1s")
    assert page.evaluate("() => window.stillTheSamePage === true")
    expect(page.locator("#status")).to_have_text("processing")
    shot(page, "prediction-running")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#status")).to_have_text("canceled")
    with live.client(user) as api:
        body = api.get(f"/v1/predictions/{prediction_id}").json()
    assert body["status"] == "canceled" and "slept 5s" not in body["logs"]


def test_ngram_tokens_stream_to_the_page(browser: Browser, live: LiveStack, user: str) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicant/ngram")
    page.fill("#in-prompt", "the")
    page.fill("#in-max_tokens", "40")
    page.fill("#in-seed", "7")
    prediction_id = submit_run(page)
    expect(page.locator("#status")).to_have_text("succeeded")
    text = page.locator("#output .text-output").inner_text()
    assert len(text.split()) >= 10
    # The page's event stream delivers the tokens one event each, from the start.
    tokens = page.evaluate(
        """url => new Promise((resolve, reject) => {
            const tokens = [];
            const source = new EventSource(url);
            source.addEventListener("output", (e) => tokens.push(e.data));
            source.addEventListener("done", () => { source.close(); resolve(tokens); });
            source.onerror = () => { source.close(); reject(new Error("stream failed")); };
        })""",
        f"/predictions/{prediction_id}/events?after=0:0",
    )
    assert len(tokens) >= 10
    assert "".join(tokens) == text


def test_shared_prediction_opens_signed_out(browser: Browser, live: LiveStack, user: str) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicate/hello-world")
    page.fill("#in-text", "everyone")
    prediction_id = submit_run(page)
    expect(page.locator("#output")).to_contain_text("hello everyone")
    page.get_by_role("button", name="Share").click()
    expect(page.get_by_role("link", name="Public page")).to_be_visible()

    stranger = new_page(browser, live)
    stranger.goto(f"/p/{prediction_id}")
    expect(stranger.locator("#output")).to_contain_text("hello everyone")
    expect(stranger.get_by_role("link", name="Sign in")).to_be_visible()
    shot(stranger, "shared")

    page.get_by_role("button", name="Unshare").click()
    expect(page.get_by_role("button", name="Share")).to_be_visible()
    response = stranger.goto(f"/p/{prediction_id}")
    assert response is not None and response.status == 404


def test_a_second_account_sees_none_of_the_firsts_private_things(
    browser: Browser, live: LiveStack, user: str
) -> None:
    with live.client(user) as api:
        owner = api.get("/v1/account").json()["username"]
        name = f"secret-{os.urandom(3).hex()}"
        created = api.post(
            "/v1/models",
            json={"owner": owner, "name": name, "visibility": "private", "hardware": "cpu"},
        )
        assert created.status_code == 201, created.text
        mine = api.post(
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "private"}},
            headers={"Prefer": "wait"},
        ).json()
    first = sign_in(browser, live, user)
    first.fill("#q", name)
    first.get_by_role("button", name="Search").click()
    expect(first.locator(".model h2")).to_have_text(f"{owner}/{name}")
    first.goto("/predictions")
    expect(first.get_by_role("link", name=mine["id"])).to_be_visible()
    shot(first, "predictions")

    other = sign_in(browser, live, live.new_account("other"))
    other.fill("#q", name)
    other.get_by_role("button", name="Search").click()
    expect(other.locator(".model")).to_have_count(0)
    response = other.goto(f"/models/{owner}/{name}")
    assert response is not None and response.status == 404
    response = other.goto(f"/predictions/{mine['id']}")
    assert response is not None and response.status == 404
    expect(other.locator("main")).not_to_contain_text("hello private")
    other.goto("/predictions")
    expect(other.locator("tbody")).to_contain_text("No predictions.")
    # Forms of another session are refused: the CSRF token is per session.
    csrf = first.locator("input[name=csrf]").first.get_attribute("value")
    refused = other.request.post(
        f"/predictions/{mine['id']}/share", multipart={"csrf": csrf or ""}, max_redirects=0
    )
    assert refused.status == 403


def test_account_creates_shows_once_and_revokes_tokens(browser: Browser, live: LiveStack) -> None:
    from replicant.accounts import add_member, create_organization

    token = live.new_account("acct")
    with live.client(token) as api:
        username = api.get("/v1/account").json()["username"]
    organization = f"org-{os.urandom(3).hex()}"
    create_organization(live.engine, organization)
    add_member(live.engine, organization, username)
    page = sign_in(browser, live, token)
    page.get_by_role("navigation", name="Main").get_by_role("link", name=username).click()
    expect(page.get_by_role("heading", name="API tokens")).to_be_visible()
    expect(page.locator("main")).to_contain_text(organization)
    page.get_by_role("button", name="Reveal secret").click()
    expect(page.locator("#webhook-secret")).to_contain_text("whsec_")
    with live.client(token) as api:
        key = api.get("/v1/webhooks/default/secret").json()["key"]
    expect(page.locator("#webhook-secret")).to_have_text(key)

    page.fill("#token-name", "laptop")
    page.get_by_role("button", name="Create token").click()
    created = page.locator("#new-token").inner_text().strip()
    assert created.startswith("r8_")
    with live.client(created) as api:
        assert api.get("/v1/account").status_code == 200
    shot(page, "account")
    page.goto("/account")  # shown once: the page never shows it again
    expect(page.locator("main")).not_to_contain_text(created)

    page.get_by_role("button", name=re.compile(r"Revoke token laptop")).click()
    expect(page.get_by_role("row", name=re.compile("laptop"))).to_contain_text("revoked")
    with live.client(created) as api:
        assert api.get("/v1/account").status_code == 401
    # Revoking the token the session holds signs the session out.
    page.get_by_role("button", name=re.compile(r"Revoke token default")).click()
    expect(page).to_have_url(re.compile(r"/signin\?next="))


def test_deployments_page_edits_instances_and_shows_the_apis_errors(
    browser: Browser, live: LiveStack
) -> None:
    token = live.new_account("deployer")
    with live.client(token) as api:
        owner, name = new_deployment(api)
    page = sign_in(browser, live, token)
    page.goto("/deployments")
    card = page.locator("section.card", has=page.get_by_role("heading", name=f"{owner}/{name}"))
    expect(card).to_contain_text("release 1")
    expect(card.locator("dd").nth(3)).to_have_text("0")  # queue depth
    card.locator("input[name=max_instances]").fill("3")
    card.get_by_role("button", name="Save").click()
    card = page.locator("section.card", has=page.get_by_role("heading", name=f"{owner}/{name}"))
    expect(card).to_contain_text("release 2")
    expect(card.locator("input[name=max_instances]")).to_have_value("3")
    shot(page, "deployments")
    with live.client(token) as api:
        release = api.get(f"/v1/deployments/{owner}/{name}").json()["current_release"]
    assert release["configuration"]["max_instances"] == 3

    card.locator("input[name=min_instances]").fill("5")
    card.get_by_role("button", name="Save").click()
    expect(page.locator(".field-error")).to_be_visible()
    with live.client(token) as api:
        assert api.get(f"/v1/deployments/{owner}/{name}").json()["current_release"]["number"] == 2


def test_pages_fit_a_phone_follow_dark_mode_and_work_from_the_keyboard(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = new_page(browser, live, viewport={"width": 390, "height": 844}, color_scheme="dark")
    page.goto("/signin")
    page.keyboard.press("Tab")  # the first stop skips to the content
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.locator("#token").focus()
    page.keyboard.type(user)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    for path in ("/", "/models/replicant/thumbnail", "/predictions", "/account"):
        page.goto(path)
        # Nothing wider than the phone's screen: no sideways scrolling.
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(20, 20, 24)", background
    page.goto("/models/replicate/hello-world")
    shot(page, "model-phone-dark")
    page.locator("#in-text").focus()
    page.keyboard.type("keys")
    page.keyboard.press("Tab")
    expect(page.get_by_role("button", name="Run")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#output")).to_contain_text("hello keys")


def test_trainings_list_and_page_show_the_version_produced(
    browser: Browser, live: LiveStack
) -> None:
    from tests.trainkit import corpus, new_destination, train

    token = live.new_account("trainer")
    destination = new_destination(live, token, f"tuned-{os.urandom(3).hex()}")
    training = train(live, token, destination, corpus(seed=3, words=300))
    page = sign_in(browser, live, token)
    page.goto("/trainings")
    page.get_by_role("link", name=training.id).click()
    expect(page.get_by_role("heading", name=f"Training {training.id}")).to_be_visible()
    version = training.output["version"]
    expect(page.locator("main")).to_contain_text(f"Version produced: {version}")
    expect(page.get_by_role("link", name=destination, exact=True)).to_be_visible()
    shot(page, "training")

    # Another account sees neither the training nor its private destination.
    other = sign_in(browser, live, live.new_account("other"))
    response = other.goto(f"/trainings/{training.id}")
    assert response is not None and response.status == 404
    other.goto("/trainings")
    expect(other.locator("tbody")).to_contain_text("No trainings.")


def test_a_failed_prediction_shows_its_error_and_the_models_traceback(
    browser: Browser, live: LiveStack, user: str
) -> None:
    page = sign_in(browser, live, user)
    run_form(page, "replicant/thumbnail")
    page.set_input_files(
        "#in-image", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"no image"}]
    )
    submit_run(page)
    expect(page.locator("#status")).to_have_text("failed")
    expect(page.locator("#error")).to_contain_text("cannot identify image file")
    expect(page.locator("#logs")).to_contain_text("Traceback")
    shot(page, "prediction-failed")


def test_predictions_list_pages_with_the_apis_cursors(browser: Browser, live: LiveStack) -> None:
    from datetime import timedelta

    from sqlalchemy import insert

    from replicant.ids import new_id
    from replicant.tables import Prediction
    from replicant.timeutil import utcnow

    token = live.new_account("pager")
    with live.client(token) as api:
        owner = api.get("/v1/account").json()["username"]
    start = utcnow() - timedelta(days=1)
    rows = [
        {
            "id": new_id(),
            "owner": owner,
            "model": "replicate/hello-world",
            "version": "v",
            "status": "succeeded",
            "input": {"text": f"row {i}"},
            "created_at": start + timedelta(seconds=i),
        }
        for i in range(55)
    ]
    with live.engine.begin() as conn:
        conn.execute(insert(Prediction), rows)
    newest_first = [r["id"] for r in reversed(rows)]

    page = sign_in(browser, live, token)
    page.goto("/predictions")
    links = page.locator("tbody a")
    expect(links).to_have_count(50)
    assert links.all_inner_texts() == newest_first[:50]
    expect(page.get_by_role("link", name="Newer")).to_have_count(0)
    page.get_by_role("link", name="Older").click()
    expect(links).to_have_count(5)
    assert links.all_inner_texts() == newest_first[50:]
    expect(page.get_by_role("link", name="Older")).to_have_count(0)
    page.get_by_role("link", name="Newer").click()
    expect(links).to_have_count(50)
    assert links.all_inner_texts() == newest_first[:50]
    # The API's date filters (UTC, to the minute).
    hour_before = (start - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")
    page.get_by_label("Created before (UTC)").fill(hour_before)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody")).to_contain_text("No predictions.")
    page.get_by_label("Created before (UTC)").fill("")
    page.get_by_label("Created after (UTC)").fill(hour_before)
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile("created_after="))
    expect(links).to_have_count(50)
    page.get_by_role("link", name="Older").click()
    expect(page).to_have_url(re.compile("created_after=.*cursor="))
    expect(links).to_have_count(5)


def test_predictions_list_filters_by_status_and_model(browser: Browser, live: LiveStack) -> None:
    from sqlalchemy import insert

    from replicant.ids import new_id
    from replicant.tables import Prediction
    from replicant.timeutil import utcnow

    token = live.new_account("sifter")
    with live.client(token) as api:
        owner = api.get("/v1/account").json()["username"]
    kinds = [
        ("replicate/hello-world", "succeeded"),
        ("replicate/hello-world", "failed"),
        ("replicant/sleep", "failed"),
        ("replicant/sleep", "canceled"),
    ]
    rows = [
        {
            "id": new_id(),
            "owner": owner,
            "model": model,
            "version": "v",
            "status": status,
            "input": {},
            "created_at": utcnow(),
        }
        for model, status in kinds
    ]
    with live.engine.begin() as conn:
        conn.execute(insert(Prediction), rows)
    ids = {(r["model"], r["status"]): r["id"] for r in rows}

    page = sign_in(browser, live, token)
    page.goto("/predictions")
    links = page.locator("tbody a")
    expect(links).to_have_count(4)
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile("status=failed"))
    expect(links).to_have_count(2)
    assert set(links.all_inner_texts()) == {
        ids["replicate/hello-world", "failed"],
        ids["replicant/sleep", "failed"],
    }
    page.get_by_label("Model").fill("replicant/sleep")
    page.get_by_role("button", name="Filter").click()
    expect(links).to_have_count(1)
    assert links.all_inner_texts() == [ids["replicant/sleep", "failed"]]


def test_usage_page_shows_what_the_runs_cost_and_downloads_csv(
    browser: Browser, live: LiveStack
) -> None:
    token = live.new_account("usage")
    with live.client(token) as api:
        created = api.post(
            "/v1/models/replicate/hello-world/predictions",
            json={"input": {"text": "usage"}},
            headers={"Prefer": "wait"},
        )
        assert created.status_code == 201, created.text
        live.wait_for(created.json()["id"], token=token)
        report = api.get("/v1/account/usage").json()
    assert report["runs"] == 1
    page = sign_in(browser, live, token)
    page.goto("/account")
    page.get_by_role("link", name="Usage and cost").click()
    expect(page.get_by_role("heading", name=re.compile("Usage of"))).to_be_visible()
    row = page.locator("#usage tbody tr", has_text="replicate/hello-world")
    expect(row).to_contain_text("cpu")
    expect(page.locator("#usage-total")).to_have_text(f"{report['cost']:.6f}")
    shot(page, "usage")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    text = open(download.value.path()).read()  # noqa: PTH123, SIM115
    assert text.splitlines()[0] == "kind,model,hardware,runs,predict_time,cost"
    assert text.splitlines()[-1].startswith("total,,,1,")


def test_a_queued_prediction_shows_why_it_waits_live(browser: Browser, live: LiveStack) -> None:
    from tests.fairkit import predict, sleep_model_on_one_slot

    model = sleep_model_on_one_slot(live, "dash-queue")
    token = live.new_account("queued")
    with live.client(token) as api:
        warm = predict(api, model, 0.1)  # boots the model process
        live.wait_for(warm, token=token)
        blocker = predict(api, model, 4.0)
        live.wait_for(blocker, lambda p: p["status"] != "starting", token=token)
        queued = predict(api, model, 0.1)
    page = sign_in(browser, live, token)
    page.goto(f"/predictions/{queued}")
    expect(page.locator("#queue")).to_contain_text("queued for gpu-t4 · 1 in line")
    expect(page.locator("#queue")).to_contain_text("expected to start")
    # Live: once it runs, the page says so and no longer says why it waited.
    expect(page.locator("#status")).to_have_text("succeeded")
    expect(page.locator("#queue")).to_have_count(0)
