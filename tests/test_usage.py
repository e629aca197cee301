"""Hardware and cost: every run names its SKU and what it cost; usage reports add up the
runs they cover; a spend limit refuses new runs with 402 (docs/usage.md)."""

from __future__ import annotations

import csv
import io

import replicate
from replicate.exceptions import ReplicateError

from replicant.usage import run_cost
from tests.accountkit import HELLO, SLEEP, cli_ok, new_user, unique
from tests.conftest import PRICES, SPEND_CAPPED, LiveStack


def _run(live: LiveStack, token: str, model: str, payload: dict[str, object]) -> dict[str, object]:
    with live.client(token) as client:
        created = client.post(
            f"/v1/models/{model}/predictions", json={"input": payload}, headers={"Prefer": "wait"}
        )
        assert created.status_code == 201, created.text
    return live.wait_for(created.json()["id"], token=token)


def test_a_prediction_names_its_hardware_and_cost(live: LiveStack) -> None:
    _, token = new_user(live, "costed")
    done = _run(live, token, HELLO, {"text": "cost"})
    assert done["status"] == "succeeded"
    assert done["hardware"] == "cpu"
    metrics = done["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["cost"] == run_cost(PRICES, "cpu", metrics["predict_time"])
    assert metrics["cost"] > 0
    # The official client reads it and ignores what it does not know.
    client = replicate.Client(api_token=token, base_url=live.url)
    again = client.predictions.get(str(done["id"]))
    assert again.status == "succeeded" and again.metrics is not None
    assert again.metrics["cost"] == metrics["cost"]


def test_usage_report_adds_up_to_the_predictions_it_covers(live: LiveStack) -> None:
    user, token = new_user(live, "usage")
    ran = [
        _run(live, token, HELLO, {"text": "one"}),
        _run(live, token, HELLO, {"text": "two"}),
        _run(live, token, SLEEP, {"seconds": 0.2}),
    ]
    with live.client(token) as client:
        report = client.get("/v1/account/usage").json()
        as_csv = client.get("/v1/account/usage", params={"format": "csv"})
        other_user, _ = new_user(live, "stranger")
        # Another account's usage does not exist to the caller.
        assert client.get("/v1/account/usage", params={"account": other_user}).status_code == 404
    assert report["account"] == user
    costs = [p["metrics"]["cost"] for p in ran]  # type: ignore[index]
    times = [p["metrics"]["predict_time"] for p in ran]  # type: ignore[index]
    assert report["runs"] == 3
    assert report["cost"] == round(sum(costs), 8)
    assert abs(report["predict_time"] - sum(times)) < 1e-6
    by_model = {(line["model"], line["hardware"]): line for line in report["lines"]}
    assert by_model[(HELLO, "cpu")]["runs"] == 2
    assert by_model[(SLEEP, "cpu")]["runs"] == 1
    assert by_model[(SLEEP, "cpu")]["cost"] == ran[2]["metrics"]["cost"]  # type: ignore[index]
    # The CSV says the same, with its total last.
    assert as_csv.status_code == 200 and as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert rows[-1]["kind"] == "total" and float(rows[-1]["cost"]) == report["cost"]
    assert sum(int(r["runs"]) for r in rows[:-1]) == 3
    # The CLI reads the same report.
    out = cli_ok(live, "usage", "--csv", "--token", token, "--url", live.url)
    assert out.strip().splitlines()[-1] == as_csv.text.strip().splitlines()[-1]
    # A period before these runs covers none of them.
    with live.client(token) as client:
        empty = client.get(
            "/v1/account/usage",
            params={"start": "2020-01-01T00:00:00Z", "end": "2020-02-01T00:00:00Z"},
        ).json()
    assert empty["runs"] == 0 and empty["cost"] == 0 and empty["lines"] == []


def test_organization_usage_is_for_its_members(live: LiveStack) -> None:
    member, member_token = new_user(live, "member")
    _, outsider_token = new_user(live, "outsider")
    org = unique("usage-org")
    cli_ok(live, "orgs", "create", org)
    cli_ok(live, "orgs", "add-member", org, member)
    org_token = cli_ok(live, "tokens", "create", org, "--name", "ci").strip()
    ran = _run(live, org_token, HELLO, {"text": "org"})
    with live.client(member_token) as client:
        report = client.get("/v1/account/usage", params={"account": org}).json()
    assert report["account"] == org and report["runs"] == 1
    assert report["cost"] == ran["metrics"]["cost"]  # type: ignore[index]
    with live.client(outsider_token) as client:
        assert client.get("/v1/account/usage", params={"account": org}).status_code == 404


def test_spend_limit_refuses_new_predictions_with_402(live: LiveStack) -> None:
    token = cli_ok(live, "accounts", "create", SPEND_CAPPED).strip()
    # Under the limit, a prediction runs; it costs more than the whole limit.
    first = _run(live, token, HELLO, {"text": "spend"})
    assert first["metrics"]["cost"] > 0  # type: ignore[index]
    with live.client(token) as client:
        refused = client.post(f"/v1/models/{HELLO}/predictions", json={"input": {"text": "more"}})
    assert refused.status_code == 402
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert problem["title"] == "Spend limit reached"
    assert "spend limit" in problem["detail"]
    # The official client raises it with the reason.
    client = replicate.Client(api_token=token, base_url=live.url)
    try:
        client.models.predictions.create(HELLO, input={"text": "again"})
    except ReplicateError as err:
        assert err.status == 402 and "spend limit" in str(err.detail)
    else:
        raise AssertionError("the spend limit did not refuse the prediction")
