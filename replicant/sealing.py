"""Sealing Cog ``Secret`` inputs, so that their plain value reaches only the model process.

The API seals each ``Secret`` input value before it goes into a workflow's input (and so into
Temporal's history) or an Idempotency-Key claim; the run activity unseals it just before it
hands the input to coglet. A sealed value is ``sealed:v1:`` and a Fernet token (AES-128-CBC
with an HMAC-SHA256, from ``cryptography``) under a key derived (HKDF-SHA256) from the
installation's ``secret_key``. The token also holds the prediction's (or training's) id and
version: a token copied into another workflow's input does not unseal there, so nobody who
can start workflows can have another model print someone's secret.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from replicant.validation import map_secrets

SEALED_PREFIX = "sealed:v1:"
_INFO = b"replicant sealed inputs v1"


class UnsealError(Exception):
    """A sealed input that this installation cannot open (another ``secret_key``, or a token
    made for another prediction). The message never holds the value."""


@functools.lru_cache(maxsize=4)
def _fernet(secret_key: str) -> Fernet:
    # A key of its own: the secret_key also signs file URLs and dashboard sessions.
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(value: str, secret_key: str, context: str) -> str:
    """``value`` sealed for ``context`` (``Sealer.context``)."""
    plain = json.dumps({"c": context, "v": value}).encode()
    return SEALED_PREFIX + _fernet(secret_key).encrypt(plain).decode()


def unseal(value: str, secret_key: str, context: str) -> str:
    """The plain value of a sealed one; a value without the mark is returned as it is (a
    workflow started by a program of its own passes plain inputs)."""
    if not value.startswith(SEALED_PREFIX):
        return value
    try:
        opened = json.loads(_fernet(secret_key).decrypt(value[len(SEALED_PREFIX) :]))
    except InvalidToken:
        raise UnsealError(
            "A Secret input could not be unsealed: it was sealed under another secret_key"
        ) from None
    if opened.get("c") != context:
        raise UnsealError("A Secret input could not be unsealed: it was sealed for another run")
    return str(opened["v"])


@dataclass(frozen=True)
class Sealer:
    """Seals and unseals the ``Secret`` inputs of one prediction (or training) of a version:
    its id and version are what a sealed value is bound to."""

    secret_key: str = field(repr=False)  # never in a log line or traceback
    object_id: str
    version: str

    @property
    def context(self) -> str:
        return f"{self.object_id}:{self.version}"

    def seal_input(
        self, schema: dict[str, Any], payload: dict[str, Any], component: str = "Input"
    ) -> dict[str, Any]:
        """``payload`` with each ``Secret`` input value sealed (every one, even one that looks
        sealed already: the model gets back exactly what the caller sent)."""
        return map_secrets(schema, payload, self.seal_value, component)

    def unseal_input(
        self, schema: dict[str, Any], payload: dict[str, Any], component: str = "Input"
    ) -> dict[str, Any]:
        """``payload`` with each sealed ``Secret`` input value opened; ``UnsealError``."""
        return map_secrets(schema, payload, self.unseal_value, component)

    def seal_value(self, value: str) -> str:
        """One ``Secret`` value sealed for this run."""
        return seal(value, self.secret_key, self.context)

    def unseal_value(self, value: str) -> str:
        """One sealed value opened; ``UnsealError``."""
        return unseal(value, self.secret_key, self.context)
