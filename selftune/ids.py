"""Identifiers in OpenAI's shapes (``file-`` + 24 base62 characters, and so on) and timestamps."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    """``prefix`` followed by ``length`` random base62 characters, e.g. ``file-PVkEstNM2W...``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    """Unix seconds: every ``created_at`` / ``created`` on the wire is an integer."""
    return int(time.time())
