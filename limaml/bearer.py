"""Bearer tokens (RFC 6750) on limaml's HTTP endpoints: the scoring service and the stream and
adaptation workers' pages share the token rules and the check."""

from __future__ import annotations

import hmac

from limaml.layered_config import ConfigError, read_secret

MIN_TOKEN_LENGTH = 16
CHALLENGE = {"WWW-Authenticate": "Bearer"}
"""The header of every 401 answer: the client should authenticate with a bearer token."""
MISSING = "this endpoint needs the header 'Authorization: Bearer <token>'"
INVALID = "invalid bearer token"


def load_bearer_token(value: str, file: str, name: str) -> str | None:
    """The token option `name` (or `name`_file) configures; None when neither is set (the
    endpoints stay open, the local default)."""
    token = read_secret(value, file, name)
    if not token:
        return None
    if len(token) < MIN_TOKEN_LENGTH or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"{name} must be at least {MIN_TOKEN_LENGTH} printable ASCII characters "
                          "without spaces; make one with: openssl rand -hex 32")
    return token


def refusal(authorization: str | None, token: str) -> str | None:
    """None when the Authorization header's value carries `token`, else why not (the 401's
    detail). Compared in constant time, so the answer's timing tells nothing of the token."""
    if not authorization:
        return MISSING
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return INVALID
    return None
