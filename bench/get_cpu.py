"""CPU cost of ``GET /v1/predictions/{id}`` by part, in this process on a SQLite read model
of finished predictions (a 2 KB input, ``--output`` output tokens, ``--logs`` KB of logs):
the row's load (as the route does it: the ORM, on the loop's own connection), the
response object built from it (``replicant.serialize.prediction``), and FastAPI's pass over
it (validation of the returned object and its JSON), then the whole route through the ASGI
app without a network (httpx's ASGI transport: routing, dependencies, the token's account
from the lookup cache, middleware). CPU time (``time.process_time``), so the figures hold on
a loaded machine.

Run: ``.venv/bin/python bench/get_cpu.py [--output 200] [--logs 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from fastapi.routing import serialize_response  # noqa: E402
from fastapi.utils import create_model_field  # noqa: E402
from sqlmodel import Session  # noqa: E402

from api.app import create_app  # noqa: E402
from api.ownpredictions import own_prediction  # noqa: E402
from api.state import AppState  # noqa: E402
from replicant import responses, serialize  # noqa: E402
from replicant.accounts import create_account  # noqa: E402
from replicant.settings import Settings  # noqa: E402
from replicant.tables import Prediction  # noqa: E402
from replicant.timeutil import utcnow  # noqa: E402

REPEATS = 300
ROWS = 50


async def _cpu_us(fn: Callable[[int], Awaitable[Any]], repeats: int = REPEATS) -> float:
    began = time.process_time()
    for i in range(repeats):
        await fn(i)
    return 1e6 * (time.process_time() - began) / repeats


async def run(output: int, logs_kb: int) -> None:
    settings = Settings(data_dir=Path(tempfile.mkdtemp()), rate_limit_default="1000000/minute")
    app = create_app(settings)
    state: AppState = app.state.replicant
    engine = state.engine
    account, token = create_account(engine, "bench")
    with Session(engine) as session:
        now = utcnow()
        for i in range(ROWS):
            session.add(
                Prediction(
                    id=f"p{i}",
                    owner="bench",
                    model="m/m",
                    version="v",
                    status="succeeded",
                    input={"prompt": "x" * 2000, "seed": 3, "scale": 0.5},
                    output=[f"token{t} " for t in range(output)],
                    logs=("a log line of some forty characters ...\n" * 25) * logs_kb,
                    metrics={"predict_time": 0.25, "total_time": 0.5},
                    created_at=now,
                    started_at=now,
                    completed_at=now,
                )
            )
        session.commit()
    field = create_model_field("Response", responses.Prediction, mode="serialization")
    base = "http://127.0.0.1:5000"

    async def load(i: int) -> Any:
        return await state.db.read(own_prediction, account, f"p{i % ROWS}")

    row = await load(0)

    async def build(i: int) -> Any:
        return serialize.prediction(row, base, secret_key=state.secret_key)

    shown = await build(0)

    async def fastapi_pass(i: int) -> Any:
        return await serialize_response(
            field=field, response_content=shown, exclude_unset=True, dump_json=True
        )

    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(transport=transport, base_url=base, headers=headers) as http:

        async def whole(i: int) -> Any:
            answer = await http.get(f"/v1/predictions/p{i % ROWS}")
            assert answer.status_code == 200, answer.text

        await whole(0)
        parts = {
            "load the row (ORM)": await _cpu_us(load),
            "build the response object": await _cpu_us(build),
            "FastAPI's pass (validate, JSON)": await _cpu_us(fastapi_pass),
            "the whole GET through the ASGI app": await _cpu_us(whole),
        }
    print(f"GET of a finished prediction: 2 KB input, {output} output tokens, {logs_kb} KB logs")
    for name, us in parts.items():
        print(f"  {name:36s} {us:8.0f} us CPU")
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=int, default=200)
    parser.add_argument("--logs", type=int, default=4, help="KB of logs")
    args = parser.parse_args()
    asyncio.run(run(args.output, args.logs))


if __name__ == "__main__":
    main()
