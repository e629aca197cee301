"""Hostile input gets a clear 4xx naming the field, never a 500 or a retriable 503."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from api.errors import ProblemError
from api.runs import check_webhook
from replicant.netguard import BlockedURL, check_target
from replicant.webhooks import DeliveryFailed, deliver, http_client
from tests.conftest import LiveStack
from tests.receiver import Receiver, running_receiver

HELLO = "/v1/models/replicate/hello-world/predictions"


@pytest.fixture
def owner(live: LiveStack) -> Iterator[tuple[str, httpx.Client]]:
    """A fresh account with a model of its own (``<user>/mine``)."""
    token = live.new_account("hostile")
    with live.client(token) as client:
        username = client.get("/v1/account").json()["username"]
        created = client.post("/v1/models", json={"owner": username, "name": "mine"})
        assert created.status_code == 201, created.text
        yield username, client


def raw_json(client: httpx.Client, method: str, path: str, body: str) -> httpx.Response:
    """Send ``body`` as it is: JSON escapes such as ``\\ud800`` reach the server unchanged."""
    return client.request(
        method, path, content=body.encode(), headers={"Content-Type": "application/json"}
    )


def assert_problem(response: httpx.Response, status: int, fields: list[str]) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [f["field"] for f in response.json()["invalid_fields"]] == fields


def test_null_for_a_required_model_field_is_refused_naming_it(
    owner: tuple[str, httpx.Client],
) -> None:
    username, client = owner
    path = f"/v1/models/{username}/mine"
    assert_problem(client.patch(path, json={"hardware": None}), 422, ["hardware"])
    assert_problem(client.patch(path, json={"visibility": None}), 422, ["visibility"])
    # Fields that may be empty still can be emptied; the model is as it was otherwise.
    response = client.patch(path, json={"description": None})
    assert response.status_code == 200, response.text
    assert client.get(path).json()["visibility"] == "public"


def test_lone_surrogates_are_refused_naming_the_field(owner: tuple[str, httpx.Client]) -> None:
    username, client = owner
    path = f"/v1/models/{username}/mine"
    assert_problem(
        raw_json(client, "PATCH", path, '{"description": "a\\ud800b"}'), 422, ["description"]
    )
    create = f'{{"owner": "{username}", "name": "other", "description": "\\udfff"}}'
    assert_problem(raw_json(client, "POST", "/v1/models", create), 422, ["description"])
    body = '{"input": {"text": "x\\ud800"}}'
    response = raw_json(client, "POST", HELLO, body)
    assert_problem(response, 422, ["input.text"])
    assert "surrogate" in response.json()["detail"]
    # In a key, the field is named with the bad character escaped.
    response = raw_json(client, "POST", HELLO, '{"input": {"te\\ud800xt": "x"}}')
    assert_problem(response, 422, ["input.te\\ud800xt"])
    # A surrogate pair (one character written as two escapes) is ordinary text.
    response = raw_json(client, "POST", HELLO, '{"input": {"text": "\\ud83d\\ude00"}}')
    assert response.status_code == 201, response.text


def test_nul_characters_are_refused_naming_the_field(owner: tuple[str, httpx.Client]) -> None:
    username, client = owner
    path = f"/v1/models/{username}/mine"
    response = raw_json(client, "PATCH", path, '{"description": "a\\u0000b"}')
    assert_problem(response, 422, ["description"])
    assert "NUL" in response.json()["detail"]
    response = raw_json(client, "POST", HELLO, '{"input": {"text": ["ok", "\\u0000"]}}')
    assert_problem(response, 422, ["input.text.1"])
    response = raw_json(
        client, "POST", HELLO, '{"input": {"text": "x"}, "webhook": "http://a\\u0001b.com/"}'
    )
    assert_problem(response, 422, ["webhook"])


def test_a_3_mb_text_input_runs(live: LiveStack, owner: tuple[str, httpx.Client]) -> None:
    _, client = owner
    text = "abc " * (3 * 1024 * 1024 // 4)
    response = client.post(HELLO, json={"input": {"text": text}})
    assert response.status_code == 201, response.text[:500]
    token = client.headers["Authorization"].split()[1]
    final = live.wait_for(response.json()["id"], token=token, timeout=120)
    assert final["status"] == "succeeded", final.get("error")
    assert final["output"] == "hello " + text
    assert final["input"]["text"] == text


def test_an_input_too_large_to_carry_says_the_limit(owner: tuple[str, httpx.Client]) -> None:
    _, client = owner
    # Many short strings: nothing to set aside, and too much to carry inline.
    response = client.post(HELLO, json={"input": {"text": ["x" * 1000] * 2000}})
    assert response.status_code in (413, 422), response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")


NUMERIC_LOOPBACK = [
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://0/",
    "http://0x7f.1/",
    "http://017700000001/",
]
BAD_HOSTS = [
    "http://" + "a" * 5000 + ".example.com/",
    "http://" + ("a" * 60 + ".") * 5 + "com/",  # 300 characters in all
    "http://a..b.example.com/",
    "http://a b.example.com/",
]


@pytest.mark.parametrize("url", NUMERIC_LOOPBACK + BAD_HOSTS)
def test_webhook_urls_delivery_would_refuse_are_refused_at_create(
    api: httpx.Client, url: str
) -> None:
    with pytest.raises(ProblemError) as err:
        check_webhook(url, allow_private=False)
    assert err.value.status == 422
    assert err.value.invalid_fields and err.value.invalid_fields[0]["field"] == "webhook"
    if url in BAD_HOSTS:  # refused even where private addresses are allowed (this stack)
        response = api.post(HELLO, json={"input": {"text": "x"}, "webhook": url})
        assert_problem(response, 422, ["webhook"])
        assert "host name is not valid" in response.json()["detail"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


async def test_delivery_refuses_the_same_urls_for_good_without_sending(
    receiver: Receiver,
) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    async with http_client() as client:
        for url in [
            f"http://2130706433:{port}/hook/",
            f"http://0x7f000001:{port}/hook/",
            f"http://127.1:{port}/hook/",
            *BAD_HOSTS,
        ]:
            with pytest.raises(DeliveryFailed) as failed:
                await deliver(
                    client,
                    url,
                    secret="whsec_" + "A" * 32,
                    msg_id="msg_x",
                    body={"id": "x"},
                    time_limit=2,
                    allow_private=False,
                )
            assert failed.value.permanent, url
    assert receiver.deliveries == []


def test_numeric_forms_name_their_address() -> None:
    for url in NUMERIC_LOOPBACK:
        with pytest.raises(BlockedURL, match="private or reserved"):
            check_target(url, allow_private=False)
    assert check_target("http://8.8.8.8/", allow_private=False) == "8.8.8.8"
    assert check_target("http://134744072/", allow_private=False) == "134744072"  # 8.8.8.8
    with pytest.raises(BlockedURL, match="not a valid IP address"):
        check_target("http://999.1/", allow_private=True)
    assert check_target("http://example.com./x", allow_private=False) == "example.com."


def test_a_malformed_multipart_upload_is_a_400(live: LiveStack) -> None:
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="content"; filename="a.txt"\rbroken\r\n'
        b"\r\nabc\r\n--XyZ--\r\n"
    )
    response = httpx.post(
        f"{live.url}/v1/files",
        content=body,
        headers={
            "Authorization": f"Bearer {live.token}",
            "Content-Type": "multipart/form-data; boundary=XyZ",
        },
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "multipart body is malformed" in response.json()["detail"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/predictions/%00",
        "/v1/predictions/%00/cancel",
        "/v1/models/a%00/b",
        "/v1/models/a%00/b/predictions",
        "/v1/models/replicate/hello-world/versions/%00",
        "/v1/files/%00",
        "/v1/trainings/%00",
        "/p/%00",
    ],
)
def test_a_nul_in_the_path_finds_nothing(api: httpx.Client, path: str) -> None:
    response = api.post(path, json={"input": {}}) if "predictions" in path else api.get(path)
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_a_nul_in_a_query_parameter_is_refused_naming_it(api: httpx.Client) -> None:
    assert_problem(api.get("/v1/predictions", params={"cursor": "a\x00"}), 422, ["cursor"])
