import os
import stat

import pytest

from shellrent.common import protocol
from shellrent.keys import material, tokens


def test_private_key_is_created_0600_and_reloaded(tmp_path):
    path = tmp_path / "k"
    key = material.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert material.fingerprint(material.load_or_create(path)) == material.fingerprint(key)
    assert material.fingerprint(key).startswith("SHA256:")


def test_private_key_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "k"
    material.load_or_create(path)
    os.chmod(path, 0o644)
    with pytest.raises(material.KeyError_, match="readable by others"):
        material.load_or_create(path)


def test_authorized_keys_parsing(tmp_path):
    key = material.load_or_create(tmp_path / "k")
    line = material.public_line(key)
    assert [material.fingerprint(k) for k in material.parse_authorized_keys(f"# c\n\n{line} me@x\n")] == \
        [material.fingerprint(key)]
    with pytest.raises(material.KeyError_, match="line 2: not an OpenSSH public key"):
        material.parse_authorized_keys(f"{line}\nssh-ed25519 AAAAnotakey\n")
    with pytest.raises(material.KeyError_, match="no public key found"):
        material.parse_authorized_keys("# nothing\n")


def test_token_round_trip():
    secret = tokens.new_secret()
    token = tokens.make(secret, "SHA256:abc+/def")
    assert tokens.split(token) == (secret, "SHA256:abc+/def")
    assert tokens.hash_secret(secret) != secret and len(tokens.hash_secret(secret)) == 64


@pytest.mark.parametrize("bad", ["", "nodot", "short.fpr", "a" * 20 + ".", "a" * 20 + ".x.y"])
def test_malformed_tokens(bad):
    with pytest.raises(tokens.TokenError, match="malformed join token"):
        tokens.split(bad)


def test_wire_targets_and_lines():
    assert protocol.parse_target(protocol.target("ab12cd34", "localhost")) == ("ab12cd34", "localhost")
    assert protocol.parse_target("localhost") is None
    assert protocol.parse_target("lease./x") is None
    assert protocol.decode(protocol.encode({"op": "hello"})) == {"op": "hello"}
    with pytest.raises(ValueError):
        protocol.decode(b"[1]")
