"""Drives Replicate's 2.x Python client (installed beside this file) against a stack.

``python client.py run REF INPUT_JSON WAIT`` prints ``replicate.run``'s output as JSON;
``python client.py delete-deployment OWNER NAME`` prints the status of the error the client
raised and how many requests it sent. ``REPLICATE_API_TOKEN`` and ``REPLICATE_BASE_URL``
come from the environment.
"""

from __future__ import annotations

import json
import os
import sys

import httpx
import replicate


def client(hooks: list[object] | None = None) -> replicate.Replicate:
    http = httpx.Client(event_hooks={"request": hooks or []})
    return replicate.Replicate(
        bearer_token=os.environ["REPLICATE_API_TOKEN"],
        base_url=os.environ["REPLICATE_BASE_URL"],
        http_client=http,
    )


def run(ref: str, payload: str, wait: str) -> None:
    output = client().run(ref, input=json.loads(payload), wait=int(wait))
    print(json.dumps({"output": output}))


def delete_deployment(owner: str, name: str) -> None:
    sent: list[str] = []
    counting = client([lambda request: sent.append(request.method)])
    try:
        counting.deployments.delete(deployment_owner=owner, deployment_name=name)
        status = 204
    except replicate.APIStatusError as err:
        status = err.status_code
    print(json.dumps({"status": status, "requests": len(sent)}))


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"run": run, "delete-deployment": delete_deployment}[command](*args)
