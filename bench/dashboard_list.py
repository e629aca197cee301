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
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.list_scale import OWNER, insert_predictions, percentiles, time_calls  # noqa: E402
from bench.stacks import ADMIN_URL, postgres_bench_stack  # noqa: E402
from replicant.accounts import add_token, ensure_account  # noqa: E402
from replicant.db import init_db, make_engine  # noqa: E402


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
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    with postgres_bench_stack(args.admin_url) as stack:
        engine = make_engine(stack.settings.resolved_database_url)
        init_db(engine)
        token = add_token(engine, ensure_account(engine, OWNER))
        insert_predictions(engine, args.rows, 0)
        engine.dispose()
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


if __name__ == "__main__":
    main()
