"""Our responses validate against Replicate's published OpenAPI spec."""

from __future__ import annotations

import httpx
import pytest

from tests.conformance import check, openapi_for
from tests.conftest import LiveStack


def test_spec_checker_catches_a_wrong_shape(live: LiveStack) -> None:
    # The checker itself must be able to fail: a prediction whose status is not in the enum.
    request = httpx.Request("GET", f"{live.url}/v1/predictions/abc")
    bad = httpx.Response(
        200,
        json={"id": "abc", "status": "exploded", "input": {}, "urls": {}},
        request=request,
    )
    with pytest.raises(AssertionError, match="OpenAPI"):
        check(bad, live.url)
    assert openapi_for(live.url) is openapi_for(live.url)


def test_prediction_responses_match_the_spec(live: LiveStack, api: httpx.Client) -> None:
    version = api.get("/v1/models/replicate/hello-world").json()["latest_version"]["id"]
    responses = [
        api.post(
            "/v1/predictions",
            json={"version": version, "input": {"text": "spec"}},
            headers={"Prefer": "wait"},
        ),
        api.post("/v1/models/replicate/hello-world/predictions", json={"input": {"text": "a"}}),
        api.post("/v1/models/replicant/sleep/predictions", json={"input": {"seconds": 5}}),
    ]
    sleeping = responses[-1].json()["id"]
    responses += [
        api.post(f"/v1/predictions/{sleeping}/cancel"),
        api.get(f"/v1/predictions/{responses[0].json()['id']}"),
        api.get("/v1/predictions"),
    ]
    live.wait_for(sleeping)
    responses.append(api.get(f"/v1/predictions/{sleeping}"))
    for response in responses:
        assert response.status_code < 300, response.text
        check(response, live.url)


def test_model_and_hardware_responses_match_the_spec(live: LiveStack, api: httpx.Client) -> None:
    responses = [
        api.get("/v1/models"),
        api.get("/v1/models/replicate/hello-world"),
        api.get("/v1/models/replicate/hello-world/versions"),
        api.get("/v1/hardware"),
    ]
    version = responses[1].json()["latest_version"]["id"]
    responses.append(api.get(f"/v1/models/replicate/hello-world/versions/{version}"))
    for response in responses:
        assert response.status_code == 200, response.text
        check(response, live.url)


def test_problem_responses_the_spec_lists_are_checked(live: LiveStack, api: httpx.Client) -> None:
    response = api.delete("/v1/files/doesnotexist")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    check(response, live.url)
