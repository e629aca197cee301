"""The dashboard's session: a signed, HttpOnly, SameSite=Lax cookie holding the API token the
user signed in with, and a per-session CSRF token that every form posts back.

The token stays the credential: revoking it signs every session that holds it out.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from api.deps import get_state

COOKIE = "replicant_session"
MAX_AGE = 30 * 24 * 3600  # a month, as an API token's holder would expect to stay signed in


@dataclass
class DashSession:
    """What the cookie carries."""

    csrf: str
    token: str | None = None


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def _serializer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(get_state(request).secret_key, salt="dashboard-session")


def load_session(request: Request) -> DashSession:
    """The request's session, a fresh anonymous one when the cookie is missing or forged."""
    cached = getattr(request.state, "dash_session", None)
    if isinstance(cached, DashSession):
        return cached
    session = DashSession(csrf=new_csrf())
    raw = request.cookies.get(COOKIE)
    if raw:
        try:
            data = _serializer(request).loads(raw, max_age=MAX_AGE)
            session = DashSession(csrf=str(data["csrf"]), token=data.get("token"))
        except (BadSignature, KeyError, TypeError):
            pass
    request.state.dash_session = session
    return session


def save_session(request: Request, response: Response, session: DashSession) -> None:
    """Write ``session`` into the response's cookie."""
    value = _serializer(request).dumps({"csrf": session.csrf, "token": session.token})
    response.set_cookie(
        COOKIE,
        value,
        max_age=MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def csrf_ok(session: DashSession, sent: object) -> bool:
    """Whether a form's CSRF field matches the session's."""
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())
