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


def _firsts(payload: bytes) -> tuple[list, list]:
    """The first key exchange and host key algorithms of a KEXINIT payload (after its type byte)."""
    packet = SSHPacket(payload)
    packet.get_bytes(16)  # cookie
    return packet.get_namelist()[:1], packet.get_namelist()[:1]


async def _choosing_process_kexinit(self, pkttype, pktid, packet):
    """Read the client's ciphers, choose what to offer, then send our KEXINIT and go on as usual.

    Also RFC 4253's rule for a guessed key exchange packet (first_kex_packet_follows), which asyncssh
    reads differently: the guess is wrong unless both sides' preferred key exchange and host key
    algorithms are the same; a wrong guess is ignored. asyncssh takes the guess as right when the
    algorithm chosen is the client's first, and dropbear's client, which follows the RFC and sends a
    second packet after a wrong guess, was disconnected ("Key exchange not in progress")."""
    ours = _ours(self)
    if ours:
        peek = SSHPacket(packet.get_remaining_payload())
        client_firsts = _firsts(packet.get_remaining_payload())
        peek.get_bytes(16)  # cookie
        for _ in range(2):  # kex, host key
            peek.get_namelist()
        client = set(peek.get_namelist()) | set(peek.get_namelist())  # ciphers both ways
        for _ in range(6):  # MACs, compression, languages
            peek.get_namelist()
        follows = peek.get_boolean()
        if getattr(self, "_shellrent_waiting", False):
            self._enc_algs = _FAST if client & set(_FAST) else _WIDE
            self._shellrent_seen, self._shellrent_waiting = True, False
            self._kexinit_sent = False  # ours was held back: asyncssh sends it now
    await _process_kexinit(self, pkttype, pktid, packet)
    if ours and follows:
        self._ignore_first_kex = client_firsts != _firsts(self._server_kexinit[1:])


def install() -> None:
    """Hook asyncssh (idempotent)."""
    connection.SSHConnection._send_kexinit = _deferred_send_kexinit
    connection.SSHConnection._packet_handlers[MSG_KEXINIT] = _choosing_process_kexinit
