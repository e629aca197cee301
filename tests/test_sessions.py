"""Dashboard sessions are kept server-side: the cookie is a random id that holds no token, a
sign-in opens a new one, and a saved cookie is worth nothing after sign-out, after its
lifetime, or once the token signed in with is revoked."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from datetime import timedelta
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from api.app import create_app
from replicant.accounts import create_account, revoke_token
from replicant.ids import hash_token
from replicant.settings import Settings
from replicant.tables import ApiToken, DashboardSession
from replicant.timeutil import utcnow
from tests.conftest import LiveStack

COOKIE = "replicant_session"


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found[1]


def sign_in(client: httpx.Client, token: str) -> str:
    """Sign ``client`` in with ``token``; the session cookie it got."""
    csrf = csrf_of(client.get("/signin"))
    signed = client.post("/signin", files={"csrf": (None, csrf), "token": (None, token)})
    assert signed.status_code == 303, signed.text
    cookie = client.cookies.get(COOKIE)
    assert cookie
    return cookie


def is_signed_in(live: LiveStack, cookie: str) -> bool:
    """Whether a browser holding only ``cookie`` gets the account page."""
    with httpx.Client(base_url=live.url, cookies={COOKIE: cookie}, timeout=90) as replay:
        response = replay.get("/account")
    if response.status_code == 303:
        assert response.headers["location"] == "/signin?next=/account"
        return False
    assert response.status_code == 200, response.text
    return True


def sessions_of(live: LiveStack, cookie: str) -> list[DashboardSession]:
    digest = hashlib.sha256(cookie.encode()).hexdigest()
    with Session(live.engine) as session:
        stmt = select(DashboardSession).where(DashboardSession.id_hash == digest)
        return list(session.exec(stmt).all())


def test_the_cookie_is_a_random_id_that_holds_no_token(live: LiveStack) -> None:
    token = live.new_account("cookie")
    with httpx.Client(base_url=live.url, timeout=90) as client:
        cookie = sign_in(client, token)
    assert token not in cookie
    # Not a signed payload either: decoded every way a cookie might be, no token and no JSON.
    for part in cookie.split("."):
        padded = part + "=" * (-len(part) % 4)
        try:
            decoded = base64.urlsafe_b64decode(padded)
        except (binascii.Error, ValueError):
            continue
        assert b"r8_" not in decoded and b"token" not in decoded
        assert token.encode() not in decoded
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie)
    # The database keeps the id's hash and the token's id, never either in clear.
    (row,) = sessions_of(live, cookie)
    with Session(live.engine) as session:
        held = session.get(ApiToken, row.token_id)
    assert held is not None and held.token_hash == hash_token(token)
    assert cookie not in row.id_hash


def test_a_saved_cookie_is_refused_after_sign_out(live: LiveStack) -> None:
    token = live.new_account("replay")
    with httpx.Client(base_url=live.url, timeout=90) as client:
        saved = sign_in(client, token)
        assert is_signed_in(live, saved)
        signed_out = client.post("/signout", files={"csrf": (None, csrf_of(client.get("/")))})
        assert signed_out.status_code == 303
        assert client.cookies.get(COOKIE) is None
    assert not is_signed_in(live, saved)
    assert sessions_of(live, saved) == []


def test_sign_in_opens_a_new_session_and_ends_the_old_one(live: LiveStack) -> None:
    token = live.new_account("rotate")
    with httpx.Client(base_url=live.url, timeout=90) as client:
        first = sign_in(client, token)
        second = sign_in(client, token)
    assert first != second
    assert not is_signed_in(live, first)
    assert is_signed_in(live, second)


def test_revoking_the_token_ends_its_sessions(live: LiveStack) -> None:
    token = live.new_account("revoked")
    with httpx.Client(base_url=live.url, timeout=90) as client:
        cookie = sign_in(client, token)
    assert is_signed_in(live, cookie)
    (row,) = sessions_of(live, cookie)
    revoke_token(live.engine, row.token_id)
    assert not is_signed_in(live, cookie)
    assert sessions_of(live, cookie) == []


def test_a_session_ends_with_its_lifetime(live: LiveStack) -> None:
    token = live.new_account("lifetime")
    with httpx.Client(base_url=live.url, timeout=90) as client:
        cookie = sign_in(client, token)
    (row,) = sessions_of(live, cookie)
    lifetime = row.expires_at - row.created_at
    assert lifetime == timedelta(seconds=live.settings.session_lifetime)
    with Session(live.engine) as session:
        stored = session.get(DashboardSession, row.id_hash)
        assert stored is not None
        stored.expires_at = utcnow() - timedelta(seconds=1)
        session.add(stored)
        session.commit()
    assert not is_signed_in(live, cookie)


def test_cookies_are_secure_when_the_public_url_is_https(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, public_url="https://dashboard.example")
    app = create_app(settings)
    _, token = create_account(app.state.replicant.engine, "secure")
    # Behind a proxy that ends TLS the request itself is plain http: the public URL decides.
    with TestClient(app, base_url="http://dashboard.example") as client:
        page = client.get("/signin")
        csrf_cookie = page.headers["set-cookie"]
        assert "; Secure" in csrf_cookie and "; HttpOnly" in csrf_cookie
        signed = client.post(
            "/signin",
            files={"csrf": (None, csrf_of(page)), "token": (None, token)},
            headers={"Cookie": csrf_cookie.split(";", 1)[0]},  # a Secure cookie, sent by hand
            follow_redirects=False,
        )
    assert signed.status_code == 303
    (session_cookie,) = [
        c for c in signed.headers.get_list("set-cookie") if c.startswith(f"{COOKIE}=")
    ]
    attributes = {a.strip().split("=")[0].lower() for a in session_cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite", "max-age"} <= attributes
    assert f"Max-Age={int(settings.session_lifetime)}" in session_cookie
    assert token not in session_cookie
