"""Looking up models and versions as a given account may see them.

A private model is invisible to everyone but its owner (and the owner's organization
members): lookups answer None, so the API can say 404 and existence does not leak.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from replicant.db import cacheable
from replicant.tables import Account, Membership, Model, Version


def account_names(session: Session, account: Account) -> set[str]:
    """The owners whose private things ``account`` may see: itself and its organizations."""
    names = {account.username}
    stmt = (
        select(Account.username)
        .join(Membership, col(Membership.organization_id) == col(Account.id))
        .where(Membership.user_id == account.id)
    )
    names.update(session.exec(stmt).all())
    return names


def can_see(session: Session, account: Account, model: Model) -> bool:
    return model.visibility == "public" or model.owner in account_names(session, account)


def find_model(session: Session, account: Account, owner: str, name: str) -> Model | None:
    stmt = select(Model).where(Model.owner == owner, Model.name == name)
    model = session.exec(stmt).first()
    if model is None or not can_see(session, account, model):
        return None
    return model


def find_version(
    session: Session, account: Account, version_id: str, model: Model | None = None
) -> tuple[Model, Version] | None:
    """A version by id (optionally within a model) that ``account`` may see."""
    version = session.get(Version, version_id)
    if version is None or (model is not None and version.model_id != model.id):
        return None
    owner_model = model or session.get(Model, version.model_id)
    if owner_model is None or not can_see(session, account, owner_model):
        return None
    return owner_model, version


def _pinned_ref_key(account: Account, ref: str) -> tuple[int | None, str] | None:
    # A ref naming its version may be reused; ``owner/name`` follows the model's latest.
    return (account.id, ref) if ":" in ref or "/" not in ref else None


@cacheable(key=_pinned_ref_key)
def resolve_version_ref(
    session: Session, account: Account, ref: str
) -> tuple[Model, Version] | None:
    """``version`` as the API accepts it: an id, ``owner/name:id``, or ``owner/name``."""
    if ":" in ref:
        name_part, _, version_id = ref.partition(":")
        owner, _, name = name_part.partition("/")
        model = find_model(session, account, owner, name)
        return None if model is None else find_version(session, account, version_id, model)
    if "/" in ref:
        owner, _, name = ref.partition("/")
        model = find_model(session, account, owner, name)
        if model is None or model.latest_version_id is None:
            return None
        return find_version(session, account, model.latest_version_id, model)
    return find_version(session, account, ref)


def latest_version(session: Session, model: Model) -> Version | None:
    return session.get(Version, model.latest_version_id) if model.latest_version_id else None


def set_official(engine: Engine, ref: str, official: bool) -> None:
    """Mark a model (``owner/name``) official (``is_official``), or not; LookupError when
    there is no such model."""
    owner, _, name = ref.partition("/")
    with Session(engine) as session:
        model = session.exec(select(Model).where(Model.owner == owner, Model.name == name)).first()
        if model is None:
            raise LookupError(f"no model {ref}")
        model.is_official = official
        session.add(model)
        session.commit()
