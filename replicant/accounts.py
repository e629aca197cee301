"""Accounts and API tokens."""

from __future__ import annotations

import secrets

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from replicant.ids import hash_token
from replicant.tables import Account, ApiToken


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
                webhook_secret="whsec_" + secrets.token_urlsafe(24),
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
