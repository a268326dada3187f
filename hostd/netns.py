"""Open a TCP connection from inside a container's network namespace (for ssh -L / -D).

Connecting from the host to the container's bridge address would miss servers bound to
127.0.0.1 in the container (Jupyter's default), so the socket is made inside the container's
namespace: one dedicated thread setns()es in, connects and returns. Needs CAP_SYS_ADMIN (root).
"""
import asyncio
import ctypes
import os
import socket
from concurrent.futures import ThreadPoolExecutor

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns")


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _connect(pid: int, host: str, port: int, timeout: float) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            _setns(target)
            try:
                sock = socket.create_connection((host, port), timeout)
            finally:
                _setns(own)
        finally:
            os.close(target)
    finally:
        os.close(own)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def connect(pid: int, host: str, port: int, timeout: float = 10) -> socket.socket:
    """A connected non-blocking socket to host:port as seen from inside pid's network namespace."""
    return await asyncio.get_running_loop().run_in_executor(_thread, _connect, pid, host, port, timeout)
