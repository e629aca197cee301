"""The dashboard's predictions page against the list API it is drawn from, at 100,000 rows.

A fresh PostgreSQL database (``--admin-url``; dropped at the end), an API process on it, and
100,000 predictions of one owner bulk-inserted into the read model (bench/list_scale.py's
rows). Then ``GET /v1/predictions`` (the API, 100 a page) and ``GET /predictions`` (the
dashboard, signed in, 50 a page and an HTML table) are timed, first page and six pages down.

Run: ``.venv/bin/python bench/dashboard_list.py [--requests 200] [--rows 100000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.list_scale import OWNER, insert_predictions, percentiles, time_calls  # noqa: E402
from replicant.accounts import add_token, ensure_account  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402
from replicant.devstack import Stack, free_port  # noqa: E402
from replicant.settings import Settings  # noqa: E402
from tests.pgdb import fresh_postgres_database


def signed_in(url: str, token: str) -> httpx.Client:
    """A dashboard session (its cookie) for ``token``."""
    client = httpx.Client(base_url=url, timeout=60)
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/signin").text)
    assert csrf is not None
    response = client.post("/signin", files={"csrf": (None, csrf[1]), "token": (None, token)})
    assert response.status_code == 303, response.text
    return client


def older(client: httpx.Client, path: str, pages: int) -> str:
    """The dashboard path ``pages`` pages down its "Older" links."""
    for _ in range(pages):
        found = re.search(
            r'href="(/predictions\?[^"]*cursor=[^"]+)" rel="next"', client.get(path).text
        )
        assert found is not None
        path = found[1].replace("&amp;", "&")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    # A database of its own on the local server, dropped after the stack has stopped.
    with fresh_postgres_database("replicant_bench", args.admin_url) as database_url:
        stack: Stack | None = None
        try:
            with tempfile.TemporaryDirectory(prefix="replicant-bench-") as data_dir:
                settings = Settings(
                    data_dir=Path(data_dir),
                    database_url=database_url,
                    api_port=free_port(),
                    temporal_port=free_port(),
                    ui_port=free_port(),
                    log_level="WARNING",
                    rate_limit_create="1000000/minute",
                    rate_limit_default="1000000/minute",
                )
                engine = make_engine(settings.resolved_database_url)
                init_db(engine)
                token = add_token(engine, ensure_account(engine, OWNER))
                insert_predictions(engine, args.rows, 0)
                stack = Stack(settings, ui=False, log_dir=Path(data_dir) / "logs")
                stack.prepare()
                url = stack.start_api()
                headers = {"Authorization": f"Bearer {token}"}
                with (
                    httpx.Client(base_url=url, headers=headers, timeout=60) as api,
                    contextlib.closing(signed_in(url, token)) as page,
                ):
                    deep_api = "/v1/predictions"
                    for _ in range(6):
                        deep_api = api.get(deep_api).json()["next"]
                    print(f"{args.rows:>7} predictions stored (one owner)")
                    first = time_calls(api, ["/v1/predictions"] * args.requests)
                    print(f"  API        GET /v1/predictions (first page)  {percentiles(first)}")
                    first = time_calls(page, ["/predictions"] * args.requests)
                    print(f"  dashboard  GET /predictions (first page)     {percentiles(first)}")
                    deep = time_calls(api, [deep_api] * args.requests)
                    print(f"  API        GET /v1/predictions (page 7)      {percentiles(deep)}")
                    deep = time_calls(page, [older(page, "/predictions", 6)] * args.requests)
                    print(f"  dashboard  GET /predictions (page 7)         {percentiles(deep)}")
                stack.stop()
                stack = None
                engine.dispose()
        finally:
            if stack is not None:
                stack.stop()


if __name__ == "__main__":
    main()
