"""Deployment instances beyond the basics: a deployment of a fine-tune (its instance loads the
trained weights from the worker's weights cache), and the warm instance of a deployment with
``min_instances=1`` rebuilt by the next worker after the one running it is SIGKILLed."""

from __future__ import annotations

import signal

import httpx
from sqlmodel import Session, select

from replicant.tables import Deployment, DeploymentInstance
from tests.conftest import LiveStack
from tests.deploykit import new_deployment
from tests.test_deployments import get, poll
from tests.trainkit import client_for, corpus, finetune, new_destination


def instances_of(live: LiveStack, owner: str, name: str) -> list[DeploymentInstance]:
    with Session(live.engine) as session:
        row = session.exec(
            select(Deployment).where(Deployment.owner == owner, Deployment.name == name)
        ).one()
        return list(
            session.exec(
                select(DeploymentInstance).where(DeploymentInstance.deployment_id == row.id)
            ).all()
        )


def retire(client: httpx.Client, owner: str, name: str) -> None:
    """Let the deployment scale to zero so its instance does not outlive the test."""
    client.patch(f"/v1/deployments/{owner}/{name}", json={"min_instances": 0})
    poll(lambda: get(client, owner, name), lambda d: d["instances"] == 0, 60)


def test_deployment_of_a_finetune_generates_from_the_training_corpus(live: LiveStack) -> None:
    token = live.new_account("ftdeployer")
    destination = new_destination(live, token, "tuned")
    text = corpus(21, 300)
    ref = finetune(live, token, destination, text)
    model, _, version = ref.partition(":")
    with live.client(token) as api:
        owner, name = new_deployment(api, model, version, min_instances=1)
        try:
            ready = poll(lambda: get(api, owner, name), lambda d: d["instances"] == 1, 90)
            assert ready["instances"] == 1, ready
            client = client_for(live, token)
            deployment = client.deployments.get(f"{owner}/{name}")
            prediction = deployment.predictions.create(input={"max_tokens": 30, "seed": 3})
            prediction.wait()
            assert prediction.status == "succeeded", (prediction.error, prediction.logs)
            assert prediction.version == version
            words = "".join(prediction.output).split()
            assert len(words) == 30
            assert set(words) <= set(text.split())
            # It ran on the deployment's warm instance, which booted the fine-tune's weights.
            [instance] = instances_of(live, owner, name)
            assert instance.status == "ready" and instance.version == version
        finally:
            retire(api, owner, name)


def test_min_instance_comes_back_after_the_worker_is_killed(live: LiveStack) -> None:
    token = live.new_account("survivor")
    with live.client(token) as api:
        owner, name = new_deployment(api, min_instances=1)
        try:
            ready = poll(lambda: get(api, owner, name), lambda d: d["instances"] == 1, 60)
            assert ready["instances"] == 1, ready
            [before] = instances_of(live, owner, name)
            assert before.status == "ready" and before.pid is not None

            live.stack.stop("worker", sig=signal.SIGKILL)
            live.stack.start_worker()

            def rebuilt(_: object = None) -> bool:
                rows = instances_of(live, owner, name)
                return [(r.status, r.host != before.host) for r in rows] == [("ready", True)]

            poll(lambda: {"ok": rebuilt()}, lambda d: bool(d["ok"]), 120)
            [after] = instances_of(live, owner, name)
            assert after.status == "ready" and after.host != before.host
            assert after.pid is not None and after.pid != before.pid
            assert get(api, owner, name)["instances"] == 1

            # The rebuilt warm instance serves the deployment's predictions.
            client = client_for(live, token)
            prediction = client.deployments.get(f"{owner}/{name}").predictions.create(
                input={"text": "again"}
            )
            prediction.wait()
            assert prediction.status == "succeeded", prediction.error
            assert prediction.output == "hello again"
            # No second instance was needed: the one rebuilt is the one that ran it.
            assert [r.id for r in instances_of(live, owner, name)] == [after.id]
        finally:
            retire(api, owner, name)
