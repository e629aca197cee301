"""Identifiers in Replicate's shape: 26 lowercase base32 characters."""

from __future__ import annotations

import base64
import hashlib
import secrets


def new_id() -> str:
    """A fresh, unguessable id (128 random bits), like ``gm3qorzdhgbfurvjtvhg6dckhu``."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def hash_token(token: str) -> str:
    """Tokens are stored as their SHA-256 digest, never in clear."""
    return hashlib.sha256(token.encode()).hexdigest()
