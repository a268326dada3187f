"""Generate, load and describe SSH keys. Private key files are always 0600."""
import os
from pathlib import Path

import asyncssh


class KeyError_(Exception):
    """A key file or public key text could not be used."""


def load_or_create(path: Path) -> asyncssh.SSHKey:
    """Load the ed25519 private key at path, creating it (0600) when missing."""
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise KeyError_(f"{path}: private key is readable by others (mode {mode:o}); chmod 600 it")
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key


def copy_private(src: Path, dst: Path) -> asyncssh.SSHKey:
    """Copy the private key file at src to dst as it is (0600; dst must not exist yet); returns it."""
    if not Path(src).exists():
        raise KeyError_(f"{src}: no such key")
    key = load_or_create(src)  # checked: a key, and not readable by others
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(Path(src).read_bytes())
    return key


def fingerprint(key: asyncssh.SSHKey) -> str:
    """SHA256 fingerprint as OpenSSH prints it (SHA256:...)."""
    return key.get_fingerprint("sha256")


def public_line(key: asyncssh.SSHKey) -> str:
    """One-line OpenSSH public key (no comment)."""
    return key.export_public_key("openssh").decode().strip()


def parse_public_key(text: str) -> asyncssh.SSHKey:
    """Parse one OpenSSH public key line (options in front are refused)."""
    text = text.strip()
    if not text or "\n" in text:
        raise KeyError_("expected exactly one public key line")
    try:
        return asyncssh.import_public_key(text)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise KeyError_(f"not an OpenSSH public key: {exc}") from None


def parse_authorized_keys(text: str) -> list[asyncssh.SSHKey]:
    """Public keys from authorized_keys-style text; blank lines and # comments skipped."""
    keys = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(parse_public_key(line))
        except KeyError_ as exc:
            raise KeyError_(f"line {n}: {exc}") from None
    if not keys:
        raise KeyError_("no public key found")
    return keys
