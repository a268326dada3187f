"""The key exchange, MAC and host key algorithms both SSH ports offer: only what an independent audit
(ssh-audit) passes, and every client of the client tests (OpenSSH, PuTTY, dropbear, libssh2,
paramiko, Go) still has one of each.

asyncssh's defaults add SHA-1 (hmac-sha1, diffie-hellman-group14-sha1, ssh-rsa), the NIST curves, a
1024-bit group exchange and 64-bit MAC tags. Left: ML-KEM-768 with X25519 (post-quantum hybrid) and
X25519 first, 2048 to 8192-bit fixed groups with SHA-2 for clients without them; encrypt-then-MAC
SHA-2 first. Strict key exchange (kex-strict-s/c-v00@openssh.com, against Terrapin) is added by
asyncssh on its own. Every shellrent key (the broker's, hostd's) is ed25519.
"""
KEX = ["mlkem768x25519-sha256", "curve25519-sha256", "curve25519-sha256@libssh.org",
       "diffie-hellman-group16-sha512", "diffie-hellman-group18-sha512", "diffie-hellman-group14-sha256"]
MACS = ["hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "umac-128-etm@openssh.com",
        "hmac-sha2-256", "hmac-sha2-512", "umac-128@openssh.com"]
HOST_KEYS = ["ssh-ed25519"]


def server(**options) -> dict:
    """asyncssh options for a server (the renter port; hostd's end of the tunnel)."""
    return {"kex_algs": KEX, "mac_algs": MACS, **options}


def tunnel_client(**options) -> dict:
    """asyncssh options for the broker's end of a tunnel: it accepts only ed25519 host keys and signs
    with its ed25519 key."""
    return {"kex_algs": KEX, "mac_algs": MACS, "server_host_key_algs": HOST_KEYS, "signature_algs": HOST_KEYS,
            **options}
