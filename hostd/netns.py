"""Open a TCP connection (or a unix socket to the session helper) from
inside a container's network namespace (for ssh -L / -D).

Connecting from the host to the container's bridge address would miss servers bound to
127.0.0.1 in the container (Jupyter's default), so the socket is made inside the container's
namespace: a thread of its own per connect setns()es in, connects and returns, within a few
seconds. One renter's slow or full listeners never delay another's forwards. Needs CAP_SYS_ADMIN
(root).
"""
import ctypes
import os
import socket

from . import offload

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 5.0
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _inside(pid: int, make):
    """make() run with this thread inside pid's network namespace; its result."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            try:
                return make()
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)


def _connect(pid: int, host: str, port: int, timeout: float) -> socket.socket:
    sock = _inside(pid, lambda: socket.create_connection((host, port), timeout))
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def unix_socket(pid: int) -> socket.socket:
    """A non-blocking unbound unix datagram socket made in pid's network namespace, where it sends
    to that namespace's abstract names (it has no address: nothing can be sent back to it); call
    from a thread of its own."""
    def make():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock
    return _inside(pid, make)


async def connect(pid: int, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """A connected non-blocking socket to host:port as seen from inside pid's network namespace."""
    return await offload.call(_connect, pid, host, port, timeout, timeout=timeout + 1)
