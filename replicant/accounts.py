"""Accounts and API tokens."""

from __future__ import annotations

import secrets

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, delete, select

from replicant.fairness import FairnessError, check_weight
from replicant.ids import hash_token
from replicant.tables import Account, ApiToken, DashboardSession, Membership
from replicant.timeutil import utcnow


def new_token() -> str:
    return "r8_" + secrets.token_urlsafe(30)


def ensure_account(engine: Engine, username: str, *, type: str = "user", name: str = "") -> Account:
    """The account named ``username``, created when missing."""
    with Session(engine, expire_on_commit=False) as session:
        account = session.exec(select(Account).where(Account.username == username)).first()
        if account is None:
            account = Account(
                username=username,
                name=name or username,
                type=type,
                # Made (and sealed) on first use: replicant.webhooks.account_webhook_secret.
                webhook_secret=None,
            )
            session.add(account)
            session.commit()
            session.refresh(account)
        return account


def add_token(
    engine: Engine, account: Account, token: str | None = None, name: str = "default"
) -> str:
    """Store a token for ``account`` (hashed) and return it in clear, once."""
    token = token or new_token()
    with Session(engine) as session:
        digest = hash_token(token)
        if session.exec(select(ApiToken).where(ApiToken.token_hash == digest)).first() is None:
            assert account.id is not None
            session.add(ApiToken(account_id=account.id, token_hash=digest, name=name))
            session.commit()
    return token


def create_account(engine: Engine, username: str) -> tuple[Account, str]:
    """A new user account and its first token."""
    account = ensure_account(engine, username)
    return account, add_token(engine, account)


class AccountError(ValueError):
    """A request about accounts that cannot be done (unknown name, wrong type, ...)."""


def find_account(engine: Engine, username: str) -> Account:
    with Session(engine, expire_on_commit=False) as session:
        account = session.exec(select(Account).where(Account.username == username)).first()
    if account is None:
        raise AccountError(f"no account named {username!r}")
    return account


def create_organization(engine: Engine, username: str, name: str = "") -> Account:
    """A new organization; its members create and see its private models."""
    with Session(engine) as session:
        if session.exec(select(Account).where(Account.username == username)).first():
            raise AccountError(f"an account named {username!r} exists already")
    return ensure_account(engine, username, type="organization", name=name)


def add_member(engine: Engine, organization: str, user: str) -> None:
    """Make ``user`` a member of ``organization`` (idempotent)."""
    org = find_account(engine, organization)
    member = find_account(engine, user)
    if org.type != "organization":
        raise AccountError(f"{organization!r} is not an organization")
    if member.type != "user":
        raise AccountError(f"{user!r} is not a user; only users join organizations")
    assert org.id is not None and member.id is not None
    with Session(engine) as session:
        if session.get(Membership, (org.id, member.id)) is None:
            session.add(Membership(organization_id=org.id, user_id=member.id))
            session.commit()


def set_weight(engine: Engine, username: str, weight: float) -> Account:
    """Set an account's share of busy hardware queues (1.0 by default; 2.0 gets twice the
    slots of a 1.0 account while both wait). Applies to predictions created from now on."""
    try:
        check_weight(weight)
    except FairnessError as err:
        raise AccountError(str(err)) from None
    with Session(engine, expire_on_commit=False) as session:
        account = session.exec(select(Account).where(Account.username == username)).first()
        if account is None:
            raise AccountError(f"no account named {username!r}")
        account.fairness_weight = weight
        session.add(account)
        session.commit()
        return account


def create_token(engine: Engine, username: str, name: str = "default") -> tuple[ApiToken, str]:
    """A new token for an existing account: the row, and the token in clear (shown once)."""
    account = find_account(engine, username)
    token = add_token(engine, account, name=name)
    with Session(engine, expire_on_commit=False) as session:
        row = session.exec(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).one()
    return row, token


def list_tokens(engine: Engine, username: str) -> list[ApiToken]:
    """An account's tokens, oldest first, revoked ones included (hashes only)."""
    account = find_account(engine, username)
    with Session(engine, expire_on_commit=False) as session:
        stmt = select(ApiToken).where(ApiToken.account_id == account.id).order_by(col(ApiToken.id))
        return list(session.exec(stmt).all())


def revoke_token(engine: Engine, token_id: int) -> ApiToken:
    """Revoke a token; every later request with it gets 401 (an API process that reused its
    account, ``lookup_cache_ttl``, refuses it within that time)."""
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise AccountError(f"no token with id {token_id}")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            session.add(row)
        # The dashboard sessions signed in with it end too (they check it anyway).
        session.exec(delete(DashboardSession).where(col(DashboardSession.token_id) == token_id))
        session.commit()
        return row
