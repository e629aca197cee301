"""Visibility holds everywhere a model shows or runs: examples are shown to others in their
shared view (no webhook, no logs), a deployment of another account's model stops once the
model is private, search lists no private model through a collection, and a model's link
fields take http(s) URLs only."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete
from sqlmodel import Session, select
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError

from replicant.accounts import add_member, create_account, create_organization
from replicant.collections import add_models, create_collection
from replicant.contracts import prediction_workflow_id
from replicant.db import init_db, make_engine
from replicant.deployments import deployment_runnable
from replicant.settings import Settings
from replicant.tables import Deployment, Membership, Model, Version
from replicant.temporal import connect
from replicant.versions import create_version, ensure_model
from tests.conftest import LiveStack
from tests.deploykit import new_deployment
from tests.modelkit import COG_YAML, Who, someone, write_model
from tests.receiver import running_receiver
from tests.waiting import wait_until

# A model that prints a log line holding what an owner would not publish.
TALKATIVE = (
    "from cog import BasePredictor\n\n\n"
    "class Predictor(BasePredictor):\n"
    "    def predict(self, name: str = 'you') -> str:\n"
    "        print('owner-only log line')\n"
    "        return 'hello ' + name\n"
)
WEBHOOK = "https://hooks.example.com/replicant?token=owner-only-token"


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def finished(api: httpx.Client, prediction_id: str) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        body: dict[str, Any] = api.get(f"/v1/predictions/{prediction_id}").json()
        return body

    return wait_until(
        fetch,
        lambda p: p["status"] in ("succeeded", "failed", "canceled"),
        what=f"prediction {prediction_id} to finish",
        timeout=120,
    )


@pytest.fixture(scope="module")
def talkative(live: LiveStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[Who, str, str]:
    """A public model of its own account, with one version: (owner, ref, version id)."""
    who = someone(live, "author")
    model = ensure_model(live.engine, who.username, unique("talkative"))
    src = write_model(
        tmp_path_factory.mktemp("talkative"), {"cog.yaml": COG_YAML, "predict.py": TALKATIVE}
    )
    version = create_version(live.settings, live.engine, model, src)
    return who, f"{who.username}/{model.name}", version.id


def test_examples_show_others_no_webhook_and_no_logs(
    live: LiveStack, talkative: tuple[Who, str, str]
) -> None:
    who, ref, _ = talkative
    with who.client(live) as api:
        created = api.post(
            f"/v1/models/{ref}/predictions",
            json={"input": {"name": "example"}, "webhook": WEBHOOK},
        )
        assert created.status_code == 201, created.text
        done = finished(api, created.json()["id"])
        assert done["status"] == "succeeded"
        assert "owner-only log line" in done["logs"]
        marked = api.post(
            f"/v1/models/{ref}/examples", json={"prediction": done["id"], "default": True}
        )
        assert marked.status_code == 201, marked.text
        # The owner sees its example as its own prediction.
        own = api.get(f"/v1/models/{ref}/examples").json()["results"][0]
        assert own["webhook"] == WEBHOOK and "owner-only log line" in own["logs"]
        assert api.get(f"/v1/models/{ref}").json()["default_example"]["webhook"] == WEBHOOK
    stranger = someone(live, "onlooker")
    with stranger.client(live) as api:
        listed = api.get(f"/v1/models/{ref}/examples").json()["results"]
        default = api.get(f"/v1/models/{ref}").json()["default_example"]
        listed_models = api.get("/v1/models").json()["results"]
        in_list = next((m for m in listed_models if f"{m['owner']}/{m['name']}" == ref), None)
    shown = [listed[0], default] + ([in_list["default_example"]] if in_list else [])
    for example in shown:
        assert example["id"] == done["id"]
        assert example["output"] == "hello example"
        assert example["input"] == {"name": "example"}
        assert example["logs"] == ""
        assert "webhook" not in example and "webhook_events_filter" not in example
        assert "stream" not in example["urls"]
        assert set(example.get("metrics", {})) <= {"predict_time"}
        assert "owner-only" not in str(example)


def instances(api: httpx.Client, path: str) -> tuple[int, int]:
    """(ready, booting) instances of a deployment, as its owner sees them."""
    body = api.get(path).json()
    return body["instances"], body["instances_booting"]


def wait_instances(api: httpx.Client, path: str, ready: int) -> None:
    wait_until(
        lambda: instances(api, path),
        lambda seen: seen == (ready, 0),
        what=f"{path} to run {ready} instance(s)",
        timeout=90,
    )


def test_a_deployment_of_another_accounts_model_stops_when_the_model_goes_private(
    live: LiveStack,
) -> None:
    author = someone(live, "maker")
    model = ensure_model(live.engine, author.username, unique("soon-private"))
    hello = Path(__file__).resolve().parent.parent / "examples" / "hello-world"
    version = create_version(live.settings, live.engine, model, hello).id
    ref = f"{author.username}/{model.name}"
    deployer = someone(live, "deployer")
    with deployer.client(live) as theirs, author.client(live) as own:
        # Both keep an instance warm (min_instances=1).
        foreign_path = "/v1/deployments/{}/{}".format(
            *new_deployment(theirs, ref, version, min_instances=1)
        )
        mine_path = "/v1/deployments/{}/{}".format(
            *new_deployment(own, ref, version, min_instances=1)
        )
        wait_instances(theirs, foreign_path, 1)
        wait_instances(own, mine_path, 1)
        # While the model is public, the other account's deployment runs it.
        ran = theirs.post(f"{foreign_path}/predictions", json={"input": {"text": "public"}})
        assert ran.status_code == 201, ran.text
        assert finished(theirs, ran.json()["id"])["output"] == "hello public"
        assert own.patch(f"/v1/models/{ref}", json={"visibility": "private"}).status_code == 200
        # Its warm instance stops, min_instances notwithstanding; the owner's own stays.
        wait_instances(theirs, foreign_path, 0)
        assert instances(own, mine_path) == (1, 0)
        refused = theirs.post(f"{foreign_path}/predictions", json={"input": {"text": "private"}})
        assert refused.status_code == 403, refused.text
        assert "can no longer see" in refused.json()["detail"]
        # Nor can it move to another version of the now private model.
        moved = theirs.patch(foreign_path, json={"version": version, "min_instances": 0})
        assert moved.status_code == 403, moved.text
        # The model's owner keeps running its own deployment of it.
        kept = own.post(f"{mine_path}/predictions", json={"input": {"text": "mine"}})
        assert kept.status_code == 201, kept.text
        assert finished(own, kept.json()["id"])["output"] == "hello mine"
        # Its instance goes too once its owner lets it (not outliving the test).
        assert own.patch(mine_path, json={"min_instances": 0}).status_code == 200
        wait_instances(own, mine_path, 0)
        # Made public again, the other account's deployment runs it again.
        assert own.patch(f"/v1/models/{ref}", json={"visibility": "public"}).status_code == 200
        again = theirs.post(f"{foreign_path}/predictions", json={"input": {"text": "again"}})
        assert again.status_code == 201, again.text
        assert finished(theirs, again.json()["id"])["output"] == "hello again"
        wait_instances(theirs, foreign_path, 1)
        assert theirs.patch(foreign_path, json={"min_instances": 0}).status_code == 200
        wait_instances(theirs, foreign_path, 0)


def test_predictions_waiting_on_a_deployment_that_stops_serving_end_canceled(
    live: LiveStack,
) -> None:
    """A deployment whose owner may no longer run its model keeps no instance: what waits on
    its queue ends ``canceled`` (read model, Temporal, webhook alike), not never."""
    author = someone(live, "maker")
    model = ensure_model(live.engine, author.username, unique("goes-private"))
    hello = Path(__file__).resolve().parent.parent / "examples" / "hello-world"
    version = create_version(live.settings, live.engine, model, hello).id
    ref = f"{author.username}/{model.name}"
    deployer = someone(live, "deployer")
    with (
        running_receiver() as receiver,
        deployer.client(live) as theirs,
        author.client(live) as own,
    ):
        # No instance at all (max_instances=0): its predictions wait on its queue.
        path = "/v1/deployments/{}/{}".format(
            *new_deployment(theirs, ref, version, max_instances=0)
        )
        waiting = []
        for n in range(2):
            created = theirs.post(
                f"{path}/predictions",
                json={
                    "input": {"text": str(n)},
                    "webhook": receiver.url,
                    "webhook_events_filter": ["completed"],
                },
            )
            assert created.status_code == 201, created.text
            waiting.append(created.json()["id"])
        assert theirs.get(f"/v1/predictions/{waiting[0]}").json()["status"] == "starting"
        assert own.patch(f"/v1/models/{ref}", json={"visibility": "private"}).status_code == 200
        for prediction_id in waiting:
            assert finished(theirs, prediction_id)["status"] == "canceled"
            [delivery] = receiver.wait(lambda seen: len(seen) >= 1, prediction_id)
            assert delivery.json()["status"] == "canceled"
    closed = asyncio.run(workflow_statuses(live, waiting))
    assert closed == [WorkflowExecutionStatus.CANCELED] * len(waiting)


async def workflow_statuses(live: LiveStack, prediction_ids: list[str]) -> list[Any]:
    """How the predictions' workflows closed, once they have."""
    client = await connect(live.settings)
    statuses = []
    for prediction_id in prediction_ids:
        handle = client.get_workflow_handle(prediction_workflow_id(prediction_id))
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
        statuses.append((await handle.describe()).status)
    return statuses


def test_a_deployment_is_runnable_only_while_its_owner_may_run_its_model(
    tmp_path: Path,
) -> None:
    # What the controller reads at each check (a deployment not runnable keeps no instance).
    engine = make_engine(Settings(data_dir=tmp_path).resolved_database_url)
    init_db(engine)
    create_account(engine, "member")
    create_account(engine, "stranger")
    create_organization(engine, "lab")
    add_member(engine, "lab", "member")
    model = ensure_model(engine, "lab", "tool", visibility="private")
    with Session(engine) as session:
        session.add(Version(id="v1", model_id=model.id))
        session.add(Deployment(owner="member", name="mine", model="lab/tool", version="v1"))
        session.add(Deployment(owner="stranger", name="theirs", model="lab/tool", version="v1"))
        session.add(Deployment(owner="member", name="other", model="lab/tool", version="v9"))
        session.commit()

    def runnable(name: str) -> bool:
        with Session(engine) as session:
            row = session.exec(select(Deployment).where(Deployment.name == name)).one()
            return deployment_runnable(session, row)

    # A member of the owning organization runs its private model; an outsider does not, nor
    # does a deployment of a version the model does not have.
    assert (runnable("mine"), runnable("theirs"), runnable("other")) == (True, False, False)
    with Session(engine) as session:
        row = session.exec(select(Model).where(Model.name == "tool")).one()
        row.visibility = "public"
        session.add(row)
        session.commit()
    assert runnable("theirs")
    # The member leaves the organization while the model is private again.
    with Session(engine) as session:
        row = session.exec(select(Model).where(Model.name == "tool")).one()
        row.visibility = "private"
        session.add(row)
        session.exec(delete(Membership))
        session.commit()
    assert not runnable("mine")
    # A model that is gone runs on no deployment.
    with Session(engine) as session:
        session.exec(delete(Version))
        session.exec(delete(Model))
        session.commit()
    assert not runnable("mine") and not runnable("theirs")


def test_search_lists_no_private_model_through_a_collection(live: LiveStack) -> None:
    author = someone(live, "hider")
    hidden = ensure_model(live.engine, author.username, unique("hidden"), visibility="private")
    shown = ensure_model(live.engine, author.username, unique("shown"))
    slug = unique("secretive")
    create_collection(live.engine, slug, f"Collection {slug}", description="a mixed bag")
    add_models(
        live.engine,
        slug,
        [f"{author.username}/{hidden.name}", f"{author.username}/{shown.name}"],
    )

    def listed(who: Who) -> list[str]:
        with who.client(live) as api:
            found = api.get("/v1/search", params={"query": slug}).json()["collections"]
        assert [c["slug"] for c in found] == [slug]
        refs: list[str] = found[0]["models"]
        return refs

    assert listed(someone(live, "searcher")) == [f"{author.username}/{shown.name}"]
    assert sorted(listed(author)) == sorted(
        [f"{author.username}/{hidden.name}", f"{author.username}/{shown.name}"]
    )


@pytest.mark.parametrize(
    "value",
    [
        "javascript:alert(document.cookie)",
        "JavaScript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        " javascript:alert(1)",
        "//evil.example.com/x",
        "file:///etc/passwd",
        "https://",
    ],
)
def test_model_link_fields_take_http_urls_only(live: LiveStack, value: str) -> None:
    who = someone(live, "linker")
    name = unique("links")
    with who.client(live) as api:
        created = api.post(
            "/v1/models",
            json={"owner": who.username, "name": name, "visibility": "public", "paper_url": value},
        )
        assert created.status_code == 422, created.text
        assert [f["field"] for f in created.json()["invalid_fields"]] == ["paper_url"]
        good = {"owner": who.username, "name": name, "github_url": "https://github.com/a/b"}
        assert api.post("/v1/models", json=good).status_code == 201
        for field in ("github_url", "paper_url", "license_url", "cover_image_url"):
            changed = api.patch(f"/v1/models/{who.username}/{name}", json={field: value})
            assert changed.status_code == 422, changed.text
            assert [f["field"] for f in changed.json()["invalid_fields"]] == [field]
        kept = api.patch(
            f"/v1/models/{who.username}/{name}", json={"license_url": "http://example.com/l"}
        )
        assert kept.status_code == 200, kept.text
        assert kept.json()["github_url"] == "https://github.com/a/b"
