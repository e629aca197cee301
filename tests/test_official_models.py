"""``is_official``: an operator marks a model official (``replicant models official``); the
model reports it, and the official-model prediction route keeps working for it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.accountkit import cli
from tests.conftest import LiveStack
from tests.modelkit import COG_YAML, pushed, someone, write_model

HELLO = (
    "from cog import BasePredictor\n\n\n"
    "class Predictor(BasePredictor):\n"
    "    def predict(self, name: str = 'you') -> str:\n"
    "        return 'official hello ' + name\n"
)


def official(live: LiveStack, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(live, "models", "official", *args)


def test_an_operator_marks_a_model_official_and_it_still_runs(
    live: LiveStack, tmp_path: Path
) -> None:
    who = someone(live, "vendor")
    ref = f"{who.username}/greeter"
    src = write_model(tmp_path / "greeter", {"cog.yaml": COG_YAML, "predict.py": HELLO})
    pushed(live, who, ref, src, create=True)
    client = who.official(live)
    assert client.models.get(ref).dict().get("is_official") in (False, None)
    marked = official(live, ref)
    assert marked.returncode == 0, marked.stderr
    with who.client(live) as api:
        assert api.get(f"/v1/models/{ref}").json()["is_official"] is True
        listed = api.get("/v1/models").json()["results"]
        assert [m["is_official"] for m in listed if f"{m['owner']}/{m['name']}" == ref] == [True]
    # The official-model route (no version given) runs it, through the official client.
    assert client.run(ref, input={"name": "there"}) == "official hello there"
    unmarked = official(live, ref, "--off")
    assert unmarked.returncode == 0, unmarked.stderr
    with who.client(live) as api:
        assert api.get(f"/v1/models/{ref}").json()["is_official"] is False
    missing = official(live, "nobody/nothing")
    assert missing.returncode == 1 and "no model nobody/nothing" in missing.stdout
