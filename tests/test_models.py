"""Models, versions and hardware on the real stack: visibility, delete rules, queues, run
counts and the warm pool (pushing: tests/test_push.py).

Through the official ``replicate`` client where it has the call, httpx elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError
from sqlmodel import Session, select

from replicant import readmodel
from replicant.contracts import PredictionRequest
from replicant.ids import new_id
from replicant.settings import Settings
from replicant.tables import Deployment, Model, Version
from replicant.temporal import connect
from tests.conftest import LiveStack
from tests.modelkit import (
    COG_YAML,
    EXAMPLES,
    PID_MODEL,
    Who,
    model_row,
    predict,
    push,
    pushed,
    someone,
    write_model,
)
from tests.workflow_runs import all_events, run_histories, start_prediction
from workers.main import WorkerParts, build_workers, run_worker
from workers.runners import PoolConfig, RunnerPool
from workflows.prediction import PredictionWorkflow

# --- visibility ----------------------------------------------------------------------------


def _hidden_from(live: LiveStack, who: Who, ref: str, version: str) -> None:
    """Everything about ``ref`` answers ``who`` as if it did not exist (404; a create by
    version, Replicate's 422 "Invalid version or not permitted")."""
    with who.client(live) as api:
        assert api.get(f"/v1/models/{ref}").status_code == 404
        assert api.get(f"/v1/models/{ref}/versions").status_code == 404
        assert api.get(f"/v1/models/{ref}/versions/{version}").status_code == 404
        assert predict(api, ref, {"text": "x"}).status_code == 404
        for by in (version, f"{ref}:{version}"):
            created = api.post("/v1/predictions", json={"version": by, "input": {"text": "x"}})
            # As for a version that does not exist: Replicate's "Invalid version or not permitted".
            assert created.status_code == 422
            assert created.json()["title"] == "Invalid version or not permitted"
        assert api.patch(f"/v1/models/{ref}", json={"description": "mine now"}).status_code == 404
        assert api.delete(f"/v1/models/{ref}").status_code == 404
        assert api.delete(f"/v1/models/{ref}/versions/{version}").status_code == 404
    assert push(live, who, ref, EXAMPLES / "hello-world").status_code == 404
    with pytest.raises(ReplicateError) as caught:
        who.official(live).models.get(ref)
    assert caught.value.status == 404
    listed = [f"{m.owner}/{m.name}" for m in _all_models(who.official(live))]
    assert ref not in listed


def _all_models(client: replicate.Client) -> list[Any]:
    page = client.models.list()
    models = list(page.results)
    while page.next:
        page = client.models.list(cursor=page.next)
        models += page.results
    return models


def test_a_private_model_is_invisible_to_other_accounts(live: LiveStack) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/secret"
    version = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True, visibility="private")
    _hidden_from(live, bob, ref, version)
    # The owner sees and runs it.
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}").json()["visibility"] == "private"
        assert predict(api, ref, {"text": "me"}).json()["output"] == "hello me"
    assert ref in [f"{m.owner}/{m.name}" for m in _all_models(alice.official(live))]


def test_making_a_public_model_private_cuts_access_at_once(live: LiveStack) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/was-public"
    version = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    with bob.client(live) as api:
        assert api.get(f"/v1/models/{ref}").status_code == 200
        assert predict(api, ref, {"text": "bob"}).json()["output"] == "hello bob"
        # Someone else's public model: visible, but not bob's to change.
        assert api.patch(f"/v1/models/{ref}", json={"description": "x"}).status_code == 403
    with alice.client(live) as api:
        changed = api.patch(f"/v1/models/{ref}", json={"visibility": "private"})
        assert changed.status_code == 200 and changed.json()["visibility"] == "private"
    _hidden_from(live, bob, ref, version)


# --- delete rules --------------------------------------------------------------------------


def test_model_delete_rules(live: LiveStack) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/doomed"
    model = alice.official(live).models.create(
        owner=alice.username, name="doomed", visibility="public", hardware="cpu"
    )
    assert model.latest_version is None and model.run_count == 0
    with bob.client(live) as api:
        refused = api.delete(f"/v1/models/{ref}")
        assert refused.status_code == 403  # public: bob may know it exists, not delete it
    with alice.client(live) as api:
        public = api.delete(f"/v1/models/{ref}")
        assert public.status_code == 409 and "private" in public.json()["detail"]
        api.patch(f"/v1/models/{ref}", json={"visibility": "private"})
    with bob.client(live) as api:
        assert api.delete(f"/v1/models/{ref}").status_code == 404
    version = pushed(live, alice, ref, EXAMPLES / "hello-world")
    with alice.client(live) as api:
        has_versions = api.delete(f"/v1/models/{ref}")
        assert has_versions.status_code == 409 and "versions" in has_versions.json()["detail"]
        assert api.delete(f"/v1/models/{ref}/versions/{version}").status_code == 202
    assert alice.official(live).models.delete(ref) is True
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}").status_code == 404


def test_version_delete_rules(live: LiveStack, tmp_path: Path) -> None:
    alice, bob = someone(live, "alice"), someone(live, "bob")
    ref = f"{alice.username}/versioned"
    src = write_model(tmp_path / "m", {"cog.yaml": COG_YAML})
    (src / "predict.py").write_text((EXAMPLES / "hello-world" / "predict.py").read_text())

    def new_version(tag: str) -> str:
        (src / "tag.txt").write_text(tag)
        return pushed(live, alice, ref, src, create=True)

    def delete(version: str, token: Who = alice) -> httpx.Response:
        with token.client(live) as api:
            return api.delete(f"/v1/models/{ref}/versions/{version}")

    ran_by_bob = new_version("1")
    public = delete(ran_by_bob)
    assert public.status_code == 409 and "private" in public.json()["detail"]
    with bob.client(live) as api:
        assert predict(api, ref, {"text": "bob"}).json()["status"] == "succeeded"
    assert delete(ran_by_bob, bob).status_code == 403  # public and not his
    with alice.client(live) as api:
        api.patch(f"/v1/models/{ref}", json={"visibility": "private"})
    assert delete(ran_by_bob, bob).status_code == 404  # now he cannot even see it
    others_ran = delete(ran_by_bob)
    assert others_ran.status_code == 409
    assert "other than you" in others_ran.json()["detail"]

    base = new_version("2")
    tuned = alice.official(live).models.create(
        owner=alice.username, name="versioned-tuned", visibility="private", hardware="cpu"
    )
    with Session(live.engine) as session:
        tuned_row = session.exec(
            select(Model).where(Model.owner == alice.username, Model.name == tuned.name)
        ).one()
        session.add(
            Version(
                id=new_id(),
                model_id=tuned_row.id or 0,
                base_version_id=base,
                weights_url="http://127.0.0.1/weights.json",
            )
        )
        session.commit()
    fine_tuned = delete(base)
    assert fine_tuned.status_code == 409 and "fine-tune" in fine_tuned.json()["detail"]

    deployed = new_version("3")
    with Session(live.engine) as session:
        session.add(
            Deployment(
                owner=alice.username, name=f"dep-{new_id()[:8]}", model=ref, version=deployed
            )
        )
        session.commit()
    in_deployment = delete(deployed)
    assert in_deployment.status_code == 409
    assert "deployment" in in_deployment.json()["detail"]

    mine = new_version("4")
    with alice.client(live) as api:
        assert predict(api, ref, {"text": "own runs do not count"}).json()["version"] == mine
    # 202, as Replicate's spec has it (the official client expects 204 and answers False).
    assert delete(mine).status_code == 202
    with alice.client(live) as api:
        assert api.get(f"/v1/models/{ref}/versions/{mine}").status_code == 404
        # The newest version left becomes the latest.
        assert api.get(f"/v1/models/{ref}").json()["latest_version"]["id"] == deployed
        missing = api.delete(f"/v1/models/{ref}/versions/{'0' * 64}")
        assert missing.status_code == 404


SLOW_MODEL = (
    "import time\n\n"
    "from cog import BasePredictor\n\n\n"
    "class Predictor(BasePredictor):\n"
    "    def predict(self, tag: str = '') -> str:\n"
    "        for _ in range(600):\n"
    "            time.sleep(0.1)\n"
    "        return tag\n"
)


def test_deleting_a_version_removes_its_directory_once_no_run_of_it_is_in_flight(
    live: LiveStack, tmp_path: Path
) -> None:
    alice = someone(live, "alice")
    ref = f"{alice.username}/dirgone"
    src = write_model(tmp_path / "m", {"cog.yaml": COG_YAML, "predict.py": SLOW_MODEL})
    version = pushed(live, alice, ref, src, create=True, visibility="private")
    directory = live.settings.data_dir.resolve() / "versions" / version
    assert (directory / "predict.py").is_file()
    with alice.client(live) as api:
        created = api.post(f"/v1/models/{ref}/predictions", json={"input": {"tag": "x"}})
        assert created.status_code == 201, created.text
        prediction_id = created.json()["id"]
        live.wait_for(prediction_id, lambda p: p["status"] == "processing", token=alice.token)
        in_flight = api.delete(f"/v1/models/{ref}/versions/{version}")
        assert in_flight.status_code == 409, in_flight.text
        assert "in progress" in in_flight.json()["detail"]
        assert (directory / "predict.py").is_file()
        assert api.post(f"/v1/predictions/{prediction_id}/cancel").status_code == 200
        ended = live.wait_for(prediction_id, token=alice.token)
        assert ended["status"] == "canceled"
        assert api.delete(f"/v1/models/{ref}/versions/{version}").status_code == 202
        assert api.get(f"/v1/models/{ref}/versions/{version}").status_code == 404
    assert not directory.exists()


# --- hardware ------------------------------------------------------------------------------


def test_hardware_list_is_the_configured_skus(live: LiveStack) -> None:
    listed = replicate.Client(api_token=live.token, base_url=live.url).hardware.list()
    assert [h.sku for h in listed] == list(live.settings.hardware)
    names = live.settings.hardware_names
    assert [h.name for h in listed] == [names.get(sku, sku) for sku in live.settings.hardware]


def test_hardware_slots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICANT_HARDWARE", '{"cpu": 3, "gpu-a100-large": 2}')
    assert Settings().hardware == {"cpu": 3, "gpu-a100-large": 2}


def test_unknown_hardware_is_refused(live: LiveStack) -> None:
    alice = someone(live, "alice")
    with pytest.raises(ReplicateError) as caught:
        alice.official(live).models.create(
            owner=alice.username, name="nowhere", visibility="public", hardware="gpu-h9000"
        )
    assert caught.value.status == 422
    ref = f"{alice.username}/somewhere"
    pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    with alice.client(live) as api:
        patched = api.patch(f"/v1/models/{ref}", json={"hardware": "gpu-h9000"})
        assert patched.status_code == 422
        assert patched.json()["invalid_fields"][0]["field"] == "hardware"
        assert api.get(f"/v1/models/{alice.username}/nowhere").status_code == 404
    refused = push(
        live,
        alice,
        f"{alice.username}/nowhere",
        EXAMPLES / "hello-world",
        create=True,
        hardware="gpu-h9000",
    )
    assert refused.status_code == 422
    assert model_row(live, ref).hardware == "cpu"


async def _run_queue(live: LiveStack, prediction_id: str) -> str:
    """The task queue the workflow scheduled the prediction's run activity on."""
    client = await connect(live.settings)
    queues = [
        event.activity_task_scheduled_event_attributes.task_queue.name
        for event in await all_events(client, f"prediction-{prediction_id}")
        if event.HasField("activity_task_scheduled_event_attributes")
        and event.activity_task_scheduled_event_attributes.activity_type.name == "run_prediction"
    ]
    assert len(queues) == 1, queues
    return queues[0]


async def _workflow_queue(live: LiveStack, prediction_id: str) -> str:
    client = await connect(live.settings)
    # The first run's queue: the after-life continues on the orchestration queue.
    first = (await run_histories(client, f"prediction-{prediction_id}"))[0]
    queue: str = first.events[0].workflow_execution_started_event_attributes.task_queue.name
    return queue


async def test_changing_hardware_routes_new_predictions_to_its_queue(live: LiveStack) -> None:
    alice = someone(live, "mover")
    ref = f"{alice.username}/mover"
    pushed(live, alice, ref, EXAMPLES / "hello-world", create=True, hardware="cpu")
    with alice.client(live) as api:
        before = predict(api, ref, {"text": "cpu"}).json()
        assert before["output"] == "hello cpu"
        patched = api.patch(f"/v1/models/{ref}", json={"hardware": "gpu-t4"})
        assert patched.status_code == 200
        after = predict(api, ref, {"text": "t4"}).json()
        assert after["output"] == "hello t4"
    assert await _run_queue(live, before["id"]) == "replicant-hw-cpu"
    assert await _run_queue(live, after["id"]) == "replicant-hw-gpu-t4"
    # The workflow itself runs on that queue too, so its worker takes the run at once.
    assert await _workflow_queue(live, after["id"]) == "replicant-hw-gpu-t4"


async def test_a_worker_started_for_one_sku_serves_only_that_queue(live: LiveStack) -> None:
    client = await connect(live.settings)
    pool = RunnerPool(PoolConfig(max_warm=1))
    parts = WorkerParts.build(live.settings, live.engine)
    only_t4 = build_workers(client, parts, pool, orchestration=False, hardware=["gpu-t4"])
    assert [w.task_queue for w in only_t4] == ["replicant-hw-gpu-t4"]
    # A client may hold one worker per task queue: the second set gets a client of its own.
    other_client = await connect(live.settings)
    everything = build_workers(other_client, parts, pool)
    assert [w.task_queue for w in everything] == [
        live.settings.orchestration_queue,
        live.settings.build_queue,
        *(f"replicant-hw-{sku}" for sku in live.settings.hardware),
    ]
    with pytest.raises(SystemExit, match="unknown hardware: gpu-h9000"):
        await run_worker(live.settings, hardware=["gpu-h9000"])


# --- run count and warm pool ---------------------------------------------------------------


def test_run_count_counts_created_predictions(live: LiveStack) -> None:
    alice, bob = someone(live, "counter"), someone(live, "bob")
    ref = f"{alice.username}/counted"
    version = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    assert alice.official(live).models.get(ref).run_count == 0
    with alice.client(live) as api:
        assert predict(api, ref, {"text": "1"}).status_code == 201
        assert predict(api, ref, {}).status_code == 422  # refused: not a run
    with bob.client(live) as api:
        assert predict(api, ref, {"text": "2"}).status_code == 201
    bob.official(live).run(f"{ref}:{version}", input={"text": "3"})
    assert alice.official(live).models.get(ref).run_count == 3
    listed = {f"{m.owner}/{m.name}": m for m in _all_models(alice.official(live))}
    assert listed[ref].run_count == 3


async def test_a_prediction_started_through_temporal_counts_once(live: LiveStack) -> None:
    alice = someone(live, "temporal-counter")
    ref = f"{alice.username}/counted-temporal"
    version = pushed(live, alice, ref, EXAMPLES / "hello-world", create=True)
    req = PredictionRequest(
        id=new_id(), owner=alice.username, model=ref, version=version, input={"text": "t"}
    )
    handle = await start_prediction(live.settings, req)
    assert (await handle.execute_update(PredictionWorkflow.wait_done)).status == "succeeded"
    assert alice.official(live).models.get(ref).run_count == 1
    # A retried record activity finds the row: the run is not counted again.
    assert readmodel.insert_prediction(live.engine, req) is False
    assert alice.official(live).models.get(ref).run_count == 1


def test_least_recently_used_model_process_is_evicted_and_boots_again(
    live: LiveStack, tmp_path: Path
) -> None:
    alice = someone(live, "warm")
    src = write_model(tmp_path / "pid", {"cog.yaml": COG_YAML, "predict.py": PID_MODEL})
    first = f"{alice.username}/pid-0"
    pushed(live, alice, first, src, create=True)
    with alice.client(live) as api:
        booted = predict(api, first, {}).json()["output"]
        assert predict(api, first, {}).json()["output"] == booted  # warm: the same process
        # As many other versions as the worker keeps warm push the first one out.
        for i in range(1, live.settings.max_warm_runners + 1):
            other = f"{alice.username}/pid-{i}"
            pushed(live, alice, other, src, create=True)
            assert predict(api, other, {}).json()["status"] == "succeeded"
        again = predict(api, first, {}).json()
    assert again["status"] == "succeeded"
    assert again["output"] != booted  # evicted, so a new process booted for it
