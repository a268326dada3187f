"""PROXY protocol v2 (HAProxy's binary header) on the renter port: a load balancer in front of the
brokers says whom it forwards. Taken only from the addresses the operator names (BROKER_PROXY_FROM),
and from them always (a connection of theirs without a header is dropped); from anyone else a header
is just bytes that are not SSH. `parse` is the rule; `Proxied` shows the client's addresses to asyncssh."""
import asyncio
import ipaddress

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
MAX_HEADER = 16 + 36 + 512  # addresses and a few TLVs; HAProxy sends less
HEADER_WAIT = 5.0  # seconds a proxy has to send its header

Addr = tuple[str, int]


class ProxyError(Exception):
    """Not a PROXY v2 header we take; str() says why (for the log)."""


def parse(buf: bytes) -> tuple[int, Addr | None, Addr | None] | None:
    """(header length, client address, address it connected to) from the start of buf, None while
    it is incomplete. Addresses are None for LOCAL (the proxy's own connection: a health check)."""
    if len(buf) < 16:
        if not SIGNATURE.startswith(buf[:12]):
            raise ProxyError("not a PROXY v2 header")
        return None
    if buf[:12] != SIGNATURE:
        raise ProxyError("not a PROXY v2 header")
    ver_cmd, family, length = buf[12], buf[13], int.from_bytes(buf[14:16], "big")
    if ver_cmd >> 4 != 2 or ver_cmd & 0xF > 1:
        raise ProxyError(f"version/command byte {ver_cmd:#04x}")
    if 16 + length > MAX_HEADER:
        raise ProxyError(f"header of {16 + length} bytes")
    if len(buf) < 16 + length:
        return None
    body = buf[16:16 + length]
    if ver_cmd & 0xF == 0:
        return 16 + length, None, None
    sizes = {0x11: 4, 0x21: 16}  # TCP over IPv4, TCP over IPv6
    if family not in sizes:
        raise ProxyError(f"address family {family:#04x}")
    n = sizes[family]
    if length < 2 * n + 4:
        raise ProxyError("addresses cut short")
    src, dst = ipaddress.ip_address(body[:n]), ipaddress.ip_address(body[n:2 * n])
    sport, dport = int.from_bytes(body[2 * n:2 * n + 2], "big"), int.from_bytes(body[2 * n + 2:2 * n + 4], "big")
    return 16 + length, (str(src), sport), (str(dst), dport)


def networks(text: str) -> list:
    """BROKER_PROXY_FROM: addresses or networks, comma-separated (ValueError names a bad one)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"BROKER_PROXY_FROM: {part!r} is not an address or network") from None
    return out


def trusted(peer, nets: list) -> bool:
    try:
        ip = ipaddress.ip_address((peer or ("",))[0])
    except ValueError:
        return False
    ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
    return any(ip in net for net in nets)


class Proxied(asyncio.Transport):
    """A connection's transport with the addresses the proxy named as its peername and sockname."""

    def __init__(self, inner: asyncio.Transport, peer: Addr, sock: Addr):
        super().__init__()
        self._t = inner
        self._names = {"peername": peer, "sockname": sock}

    def get_extra_info(self, name, default=None):
        return self._names[name] if name in self._names else self._t.get_extra_info(name, default)

    def write(self, data):
        self._t.write(data)

    def writelines(self, data):
        self._t.writelines(data)

    def write_eof(self):
        self._t.write_eof()

    def can_write_eof(self):
        return self._t.can_write_eof()

    def close(self):
        self._t.close()

    def abort(self):
        self._t.abort()

    def is_closing(self):
        return self._t.is_closing()

    def pause_reading(self):
        self._t.pause_reading()

    def resume_reading(self):
        self._t.resume_reading()

    def is_reading(self):
        return self._t.is_reading()

    def get_write_buffer_size(self):
        return self._t.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None):
        self._t.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self):
        return self._t.get_write_buffer_limits()

    def set_protocol(self, protocol):
        self._t.set_protocol(protocol)

    def get_protocol(self):
        return self._t.get_protocol()
