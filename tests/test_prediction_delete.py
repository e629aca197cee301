"""``DELETE /v1/predictions/{id}`` (beyond Replicate): the owner removes a prediction's input and
output files at once (``data_removed``), canceling it first if it has not ended."""

from __future__ import annotations

import base64
import io

import httpx
from PIL import Image

from tests.conftest import LiveStack


def png_data_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (64, 32), (10, 120, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_deleting_a_finished_prediction_removes_its_files_now(
    live: LiveStack, api: httpx.Client
) -> None:
    created = api.post(
        "/v1/models/replicant/thumbnail/predictions",
        json={"input": {"image": png_data_uri(), "width": 16}},
        headers={"Prefer": "wait"},
    ).json()
    done = live.wait_for(created["id"], timeout=180)
    assert done["status"] == "succeeded", done["error"]
    output_url = done["output"]
    assert httpx.get(output_url).status_code == 200
    # Another account cannot remove it.
    with live.client(live.new_account("intruder")) as intruder:
        assert intruder.delete(f"/v1/predictions/{created['id']}").status_code == 404
    assert httpx.get(output_url).status_code == 200
    deleted = api.delete(f"/v1/predictions/{created['id']}")
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["data_removed"] is True and body["status"] == "succeeded"
    assert body["input"] == {} and body["output"] is None
    assert httpx.get(output_url).status_code == 404
    assert api.get(f"/v1/predictions/{created['id']}").json() == body
    listed = api.get("/v1/predictions").json()["results"]
    assert [p["data_removed"] for p in listed if p["id"] == created["id"]] == [True]


def test_deleting_a_running_prediction_cancels_it_first(live: LiveStack, api: httpx.Client) -> None:
    created = api.post(
        "/v1/models/replicant/sleep/predictions", json={"input": {"seconds": 30}}
    ).json()
    live.wait_for(created["id"], lambda p: p["status"] == "processing", 60)
    deleted = api.delete(f"/v1/predictions/{created['id']}")
    assert deleted.status_code == 200, deleted.text
    body = deleted.json()
    assert body["status"] == "canceled" and body["data_removed"] is True
    assert body["input"] == {} and body["output"] is None and body["logs"] == ""
    # It stays so: no late write of the canceled run brings data back.
    final = live.wait_for(created["id"])
    assert final["status"] == "canceled" and final["data_removed"] is True
    assert final["input"] == {} and final["output"] is None


def test_deleting_an_unknown_prediction_is_404(api: httpx.Client) -> None:
    response = api.delete("/v1/predictions/doesnotexist")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
