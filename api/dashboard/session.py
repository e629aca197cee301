"""The dashboard's sessions, kept server-side.

Signed in, the browser's ``replicant_session`` cookie holds a random id and nothing else; the
``dashboardsession`` row (found by the id's hash) names the API token the user signed in with
by its id (never the token), the session's CSRF token and when it ends
(``session_lifetime``). A sign-in opens a new session (a new id, the old one deleted), a
sign-out deletes it, and revoking the token ends every session opened with it: a saved
cookie is worth nothing after any of these.

Before sign-in, the sign-in form's CSRF token lives in a signed cookie of its own
(``replicant_csrf``), so anonymous visits write nothing to the database.

Cookies are HttpOnly, SameSite=Lax, and Secure when the public URL (or the request) is https.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeSerializer
from sqlmodel import Session, col, delete, select

from api.deps import get_state
from replicant.ids import hash_token
from replicant.tables import ApiToken, DashboardSession
from replicant.timeutil import utcnow

COOKIE = "replicant_session"
CSRF_COOKIE = "replicant_csrf"


@dataclass
class DashSession:
    """The request's session: signed in when ``token_id`` is set."""

    csrf: str
    token_id: int | None = None  # the API token signed in with, by id
    account_id: int | None = None  # that token's account
    sid: str | None = None  # the cookie's id, known on the request that opened the session
    changed: bool = False  # the response sets (or clears) the cookies
    drop_cookie: bool = False  # the request's session cookie names no live session


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def _id_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _csrf_serializer(request: Request) -> URLSafeSerializer:
    return URLSafeSerializer(get_state(request).secret_key, salt="dashboard-csrf")


def _anonymous(request: Request) -> DashSession:
    """A signed-out session: the CSRF token of the signed cookie, or a new one."""
    raw = request.cookies.get(CSRF_COOKIE)
    if raw:
        try:
            csrf = _csrf_serializer(request).loads(raw)
            if isinstance(csrf, str) and csrf:
                return DashSession(csrf=csrf)
        except BadSignature:
            pass
    return DashSession(csrf=new_csrf(), changed=True)


def _live_session(session: Session, id_hash: str) -> tuple[DashboardSession, int] | None:
    """The session row and its account, while it lasts and its token is not revoked."""
    stmt = (
        select(DashboardSession, ApiToken.account_id)
        .join(ApiToken, col(ApiToken.id) == col(DashboardSession.token_id))
        .where(DashboardSession.id_hash == id_hash)
        .where(col(DashboardSession.expires_at) > utcnow())
        .where(col(ApiToken.revoked_at).is_(None))
    )
    row = session.exec(stmt).first()
    return None if row is None else (row[0], row[1])


async def load_session(request: Request) -> DashSession:
    """The request's session (read once per request): signed in when its cookie names a live
    session, else a signed-out one."""
    cached = getattr(request.state, "dash_session", None)
    if isinstance(cached, DashSession):
        return cached
    found = None
    sid = request.cookies.get(COOKIE)
    if sid:
        found = await get_state(request).db.read(_live_session, _id_hash(sid))
    if found is None:
        dash = _anonymous(request)
        if sid:  # a dead session's cookie is cleared
            dash.changed = dash.drop_cookie = True
    else:
        row, account_id = found
        dash = DashSession(csrf=row.csrf, token_id=row.token_id, account_id=account_id)
    request.state.dash_session = dash
    return dash


def session_of(request: Request) -> DashSession:
    """The session ``load_session`` read for this request, or a signed-out one."""
    cached = getattr(request.state, "dash_session", None)
    if isinstance(cached, DashSession):
        return cached
    dash = _anonymous(request)
    request.state.dash_session = dash
    return dash


async def session_account_id(request: Request) -> int | None:
    """The account a dashboard request is signed in as (None when signed out)."""
    return (await load_session(request)).account_id


def token_id_of(session: Session, token: str) -> tuple[int, int] | None:
    """(id, account id) of a token that is not revoked."""
    stmt = (
        select(ApiToken.id, ApiToken.account_id)
        .where(ApiToken.token_hash == hash_token(token))
        .where(col(ApiToken.revoked_at).is_(None))
    )
    row = session.exec(stmt).first()
    return None if row is None or row[0] is None else (row[0], row[1])


def _open(session: Session, old_hash: str | None, row: DashboardSession) -> None:
    if old_hash is not None:
        session.exec(delete(DashboardSession).where(col(DashboardSession.id_hash) == old_hash))
    # Ended sessions go as new ones come: the table holds about the live ones only.
    session.exec(delete(DashboardSession).where(col(DashboardSession.expires_at) <= utcnow()))
    session.add(row)
    session.commit()


def _end(session: Session, id_hash: str) -> None:
    session.exec(delete(DashboardSession).where(col(DashboardSession.id_hash) == id_hash))
    session.commit()


async def open_session(request: Request, token_id: int, account_id: int) -> DashSession:
    """A new session for the token (a new id and CSRF token; the request's old one ends)."""
    state = get_state(request)
    sid = secrets.token_urlsafe(32)
    old = request.cookies.get(COOKIE)
    now = utcnow()
    row = DashboardSession(
        id_hash=_id_hash(sid),
        token_id=token_id,
        csrf=new_csrf(),
        created_at=now,
        expires_at=now + timedelta(seconds=state.settings.session_lifetime),
    )
    await state.db.run(_open, _id_hash(old) if old else None, row)
    dash = DashSession(
        csrf=row.csrf, token_id=token_id, account_id=account_id, sid=sid, changed=True
    )
    request.state.dash_session = dash
    return dash


async def end_session(request: Request) -> DashSession:
    """Delete the request's session; the request goes on signed out, with a new CSRF token."""
    sid = request.cookies.get(COOKIE)
    if sid:
        await get_state(request).db.run(_end, _id_hash(sid))
    dash = DashSession(csrf=new_csrf(), changed=True, drop_cookie=True)
    request.state.dash_session = dash
    return dash


def _secure(request: Request) -> bool:
    public = get_state(request).settings.resolved_public_url
    return public.startswith("https://") or request.url.scheme == "https"


def save_session(request: Request, response: Response, dash: DashSession) -> None:
    """Set the cookies of a session that changed on this request (opened, ended, new CSRF)."""
    if not dash.changed:
        return
    secure = _secure(request)

    def put(name: str, value: str | None, max_age: int | None = None) -> None:
        if value is None:
            response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")
        else:
            response.set_cookie(
                name, value, max_age=max_age, path="/", secure=secure, httponly=True,
                samesite="lax",
            )  # fmt: skip

    if dash.sid is not None:
        put(COOKIE, dash.sid, int(get_state(request).settings.session_lifetime))
        put(CSRF_COOKIE, None)
    elif dash.token_id is None:
        if dash.drop_cookie:
            put(COOKIE, None)
        put(CSRF_COOKIE, _csrf_serializer(request).dumps(dash.csrf))


def csrf_ok(session: DashSession, sent: object) -> bool:
    """Whether a form's CSRF field matches the session's."""
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())
