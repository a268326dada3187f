"""Join tokens: a random secret plus the broker's key fingerprint, stored only as a hash.

A token reads `SECRET.FPR`, where FPR is the base64 part of the broker client key's SHA256
fingerprint. hostd pins the broker by that fingerprint, so nothing is trusted on first use.
"""
import hashlib
import hmac
import secrets


class TokenError(Exception):
    """A token string is malformed."""


def new_secret() -> str:
    """A fresh 192-bit secret in hex: no dots, and never a leading '-' that a CLI would take for an option."""
    return secrets.token_hex(24)


def make(secret: str, broker_fingerprint: str) -> str:
    """Token text handed to the provider."""
    return f"{secret}.{broker_fingerprint.removeprefix('SHA256:')}"


def split(token: str) -> tuple[str, str]:
    """(secret, broker fingerprint 'SHA256:...') from token text."""
    secret, sep, fpr = token.strip().partition(".")
    if not sep or len(secret) < 16 or not fpr or "." in fpr:
        raise TokenError("malformed join token (expected SECRET.FINGERPRINT as printed by `broker host invite`)")
    return secret, "SHA256:" + fpr


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a secret: what the broker stores."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(a.encode(), b.encode())
