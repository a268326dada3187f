"""The renter port's ciphers: AES-GCM for every client that has it, a wider set for the rest.

OpenSSH's client lists chacha20-poly1305 first, and the client's order decides: offered chacha20,
every OpenSSH login would take it, and AES-GCM (AES-NI) is what makes the relay fast. Clients without
AES-GCM (libssh2 before 1.11: curl, PHP, libgit2; dropbear; older PuTTY and Go) need chacha20 or
AES-CTR. So on the renter port the broker waits for the client's KEXINIT before it sends its own
(every SSH client sends its KEXINIT without waiting for the server's), and offers AES-GCM alone to a
client that lists it, and AES-GCM, chacha20-poly1305 and AES-CTR to one that does not.

This hooks two methods of asyncssh's connection (pinned in pyproject.toml), and acts only on server
connections whose cipher list is exactly WIDE: nothing else in the process is touched.
"""
from asyncssh import connection
from asyncssh.packet import SSHPacket

FAST = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
WIDE = FAST + ["chacha20-poly1305@openssh.com", "aes128-ctr", "aes256-ctr", "aes192-ctr"]
_FAST = [a.encode() for a in FAST]
_WIDE = [a.encode() for a in WIDE]
MSG_KEXINIT = 20

_send_kexinit = connection.SSHConnection._send_kexinit
_process_kexinit = connection.SSHConnection._process_kexinit


def _ours(conn) -> bool:
    return conn.is_server() and list(getattr(conn, "_shellrent_algs", conn._enc_algs)) == _WIDE


def _deferred_send_kexinit(self) -> None:
    """The first KEXINIT of a renter connection waits for the client's."""
    if _ours(self) and not getattr(self, "_shellrent_seen", False):
        self._shellrent_algs = list(self._enc_algs)
        self._shellrent_waiting = True
        return
    _send_kexinit(self)


async def _choosing_process_kexinit(self, pkttype, pktid, packet):
    """Read the client's ciphers, choose what to offer, then send our KEXINIT and go on as usual."""
    if _ours(self) and getattr(self, "_shellrent_waiting", False):
        peek = SSHPacket(packet.get_remaining_payload())
        peek.get_bytes(16)  # cookie
        for _ in range(2):  # kex, host key
            peek.get_namelist()
        client = set(peek.get_namelist()) | set(peek.get_namelist())  # ciphers both ways
        self._enc_algs = _FAST if client & set(_FAST) else _WIDE
        self._shellrent_seen, self._shellrent_waiting = True, False
        self._kexinit_sent = False  # ours was held back: asyncssh sends it now
    await _process_kexinit(self, pkttype, pktid, packet)


def install() -> None:
    """Hook asyncssh (idempotent)."""
    connection.SSHConnection._send_kexinit = _deferred_send_kexinit
    connection.SSHConnection._packet_handlers[MSG_KEXINIT] = _choosing_process_kexinit
