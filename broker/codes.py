"""Codes people type once: signup codes and credit vouchers (made, read back as typed, hashed)."""
import base64
import hashlib
import secrets

from .errors import BrokerError

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base32: no 0/O or 1/I to confuse when typed


def new(prefix: str) -> str:
    """A fresh code: PREFIX-XXXX-XXXX-XXXX-XXXX (80 random bits)."""
    body = base64.b32encode(secrets.token_bytes(10)).decode()
    return prefix + "-" + "-".join(body[i:i + 4] for i in range(0, 16, 4))


def digest(prefix: str, text: str) -> str:
    """The stored form of a code as typed (any case, with or without dashes and spaces); BrokerError
    for anything that cannot be one."""
    clean = "".join(text.split()).replace("-", "").upper()
    if not clean.startswith(prefix) or len(clean) != len(prefix) + 16 or \
            any(c not in _ALPHABET for c in clean[len(prefix):]):
        raise BrokerError(f"{text[:40]!r} is not a code of the form {prefix}-XXXX-XXXX-XXXX-XXXX")
    return hashlib.sha256(clean.encode()).hexdigest()
