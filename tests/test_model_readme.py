"""A model's README: ``GET /v1/models/{owner}/{name}/readme``, set by ``PATCH`` (stored, not
dropped) or by the README.md of a pushed version; ``PATCH`` refuses fields it does not know."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LiveStack
from tests.modelkit import COG_YAML, PID_MODEL, pushed, someone, write_model


def test_a_pushed_readme_is_served_and_patch_replaces_it(live: LiveStack, tmp_path: Path) -> None:
    alice = someone(live, "readme")
    ref = f"{alice.username}/documented"
    src = write_model(
        tmp_path / "model",
        {"cog.yaml": COG_YAML, "predict.py": PID_MODEL, "README.md": "# Documented\n\nHello.\n"},
    )
    pushed(live, alice, ref, src, create=True)
    with alice.client(live) as api:
        readme = api.get(f"/v1/models/{ref}/readme")
        assert readme.status_code == 200
        assert readme.headers["content-type"].startswith("text/plain")
        assert readme.text == "# Documented\n\nHello.\n"
        patched = api.patch(f"/v1/models/{ref}", json={"readme": "# New\n", "description": "d"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["description"] == "d"
        assert api.get(f"/v1/models/{ref}/readme").text == "# New\n"
        # A field the model does not have is refused, naming it, and nothing changes.
        refused = api.patch(
            f"/v1/models/{ref}",
            json={"weights_url": "https://example.com/w", "description": "changed"},
        )
        assert refused.status_code == 422
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert [f["field"] for f in refused.json()["invalid_fields"]] == ["weights_url"]
        assert api.get(f"/v1/models/{ref}").json()["description"] == "d"
    # Others read a public model's README, but cannot change it.
    bob = someone(live, "reader")
    with bob.client(live) as api:
        assert api.get(f"/v1/models/{ref}/readme").text == "# New\n"
        assert api.patch(f"/v1/models/{ref}", json={"readme": "mine"}).status_code == 403
    # A new push with a README.md replaces it; one without leaves it as it is.
    (src / "README.md").write_text("# Second\n")
    pushed(live, alice, ref, src)
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}/readme").text == "# Second\n"
    (src / "README.md").unlink()
    (src / "extra.txt").write_text("changes the version\n")
    pushed(live, alice, ref, src)
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}/readme").text == "# Second\n"


def test_readme_of_a_model_without_one_and_of_an_unknown_model(live: LiveStack) -> None:
    with live.client() as api:
        empty = api.get("/v1/models/replicate/hello-world/readme")
        assert empty.status_code == 200 and empty.text == ""
        missing = api.get("/v1/models/nobody/nothing/readme")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
