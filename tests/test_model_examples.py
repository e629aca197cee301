"""Model examples: the owner marks succeeded predictions of a model as examples; the model's
``default_example`` is the one marked default (else the oldest); ``GET .../examples`` lists
them; retention leaves an example's data in place."""

from __future__ import annotations

import asyncio
from pathlib import Path

from replicant.temporal import connect
from tests.conftest import LiveStack
from tests.modelkit import COG_YAML, pushed, someone, write_model
from tests.test_official_models import HELLO
from tests.waiting import wait_until


async def workflow_done(live: LiveStack, prediction_id: str) -> None:
    """Wait for the prediction's workflow to end (after its retention removal ran)."""
    client = await connect(live.settings)
    await client.get_workflow_handle(f"prediction-{prediction_id}").result()


def test_the_owner_marks_examples_and_the_model_shows_its_default(
    live: LiveStack, tmp_path: Path
) -> None:
    who = someone(live, "exemplar")
    ref = f"{who.username}/greeter"
    pushed(
        live,
        who,
        ref,
        write_model(tmp_path / "m", {"cog.yaml": COG_YAML, "predict.py": HELLO}),
        create=True,
    )
    client = who.official(live)
    first = client.models.predictions.create(model=ref, input={"name": "one"})
    second = client.models.predictions.create(model=ref, input={"name": "two"})
    plain = client.models.predictions.create(model=ref, input={"name": "plain"})
    for p in (first, second, plain):
        p.wait()
        assert p.status == "succeeded"
    with who.client(live) as api:
        assert api.get(f"/v1/models/{ref}").json()["default_example"] is None
        marked = api.post(f"/v1/models/{ref}/examples", json={"prediction": first.id})
        assert marked.status_code == 201, marked.text
        assert api.get(f"/v1/models/{ref}").json()["default_example"]["id"] == first.id
        api.post(f"/v1/models/{ref}/examples", json={"prediction": second.id, "default": True})
        model = api.get(f"/v1/models/{ref}").json()
        assert model["default_example"]["id"] == second.id
        assert model["default_example"]["output"] == "official hello two"
        listed = api.get(f"/v1/models/{ref}/examples").json()
        assert [p["id"] for p in listed["results"]] == [second.id, first.id]
        # The default follows the marks: unmarked, the oldest example is the default again.
        assert api.delete(f"/v1/models/{ref}/examples/{second.id}").status_code == 204
        assert api.get(f"/v1/models/{ref}").json()["default_example"]["id"] == first.id
        assert api.delete(f"/v1/models/{ref}/examples/{second.id}").status_code == 404
        refused = api.post(f"/v1/models/{ref}/examples", json={"prediction": "nope"})
        assert refused.status_code == 422
        assert [f["field"] for f in refused.json()["invalid_fields"]] == ["prediction"]
    # Anyone who sees the (public) model sees its examples; only the owner marks them.
    stranger = someone(live, "viewer")
    with stranger.client(live) as api:
        assert [p["id"] for p in api.get(f"/v1/models/{ref}/examples").json()["results"]] == [
            first.id
        ]
        forbidden = api.post(f"/v1/models/{ref}/examples", json={"prediction": plain.id})
        assert forbidden.status_code == 403
    # Retention (the sweep, after it passed over both) removes the data of the plain
    # prediction, not of the example, which is older.
    asyncio.run(workflow_done(live, first.id))
    asyncio.run(workflow_done(live, plain.id))
    with who.client(live) as api:
        wait_until(
            lambda: api.get(f"/v1/predictions/{plain.id}").json()["data_removed"],
            what="the retention sweep removes the plain prediction's data",
        )
        kept = api.get(f"/v1/predictions/{first.id}").json()
        assert kept["data_removed"] is False and kept["output"] == "official hello one"
        # Removing an example's data on request unmarks it.
        assert api.delete(f"/v1/predictions/{first.id}").status_code == 200
        assert api.get(f"/v1/models/{ref}").json()["default_example"] is None
        assert api.get(f"/v1/models/{ref}/examples").json()["results"] == []
