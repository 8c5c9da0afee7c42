"""Identifiers in OpenAI's shapes (``file-`` + 24 base62 characters, and so on) and timestamps."""

from __future__ import annotations

import hashlib
import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    """``prefix`` followed by ``length`` random base62 characters, e.g. ``file-PVkEstNM2W...``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def derived_id(prefix: str, *keys: str, length: int = 24) -> str:
    """An id in the same shape as ``random_id``, the same for the same ``keys``: what a retried step
    (after a crash, or a client's retry) creates gets the id the first try gave it, so it is
    recognised instead of created twice."""
    digest = int.from_bytes(hashlib.sha256("\x00".join(keys).encode()).digest(), "big")
    chars = []
    for _ in range(length):
        digest, k = divmod(digest, len(_ALPHABET))
        chars.append(_ALPHABET[k])
    return prefix + "".join(chars)


def now() -> int:
    """Unix seconds: every ``created_at`` / ``created`` on the wire is an integer."""
    return int(time.time())
