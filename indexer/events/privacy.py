"""Pseudonymisation of shopper ids: a keyed hash, so raw ids are never stored.

``pseudonymise(user, key)`` is HMAC-SHA256 of the UTF-8 id under a secret key, as hex,
truncated to 32 characters (128 bits: collisions among even a billion shoppers are
vanishingly unlikely). A keyed hash, not a plain one: shopper ids are often guessable
(numbers, e-mail addresses), and a plain hash of a guessable id can be reversed by
hashing every candidate; without the key it cannot. The key must stay stable: a new
key gives every shopper a new pseudonym and so splits each history in two.

Raw shopper ids are never stored, logged or put in metrics; code that receives one
pseudonymises it first and forgets it.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HASH_CHARS", "MIN_KEY_BYTES", "check_key", "pseudonymise"]

#: Hex characters kept of the HMAC (128 bits).
HASH_CHARS = 32
#: Shortest key accepted: 128 bits, as much as the pseudonym keeps.
MIN_KEY_BYTES = 16


def check_key(key: bytes) -> bytes:
    """Return ``key`` when it is long enough to pseudonymise with; raise otherwise.

    Raises:
        ValueError: the key is empty or shorter than :data:`MIN_KEY_BYTES` bytes; the
            message says how to make a good one (the key itself is never echoed).
    """
    if len(key) < MIN_KEY_BYTES:
        what = "empty" if not key else f"only {len(key)} bytes"
        raise ValueError(
            f"the pseudonymisation key is {what}; it must be at least {MIN_KEY_BYTES} "
            "random bytes, e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`"
        )
    return key


def pseudonymise(user: str, key: bytes) -> str:
    """The pseudonym of shopper id ``user`` under ``key``: 32 lowercase hex characters.

    Deterministic for a (user, key) pair, so one shopper's events share a pseudonym.

    >>> pseudonymise("17850", b"0123456789abcdef")
    'd86d7e407d62db01e3428fb9eb2079b9'

    Raises:
        ValueError: ``user`` is empty (a guest has no pseudonym: store ``None``), or the
            key is too short (see :func:`check_key`).
    """
    if not user:
        raise ValueError("an empty shopper id is a guest; store no user for it")
    check_key(key)
    return hmac.new(key, user.encode("utf-8"), hashlib.sha256).hexdigest()[:HASH_CHARS]
