"""Keystroke round trip: send one byte to `cat` on a pty, wait for its echo; print the median in ms.

usage: rtt.py PORT KEY USER [JUMP_PORT]   (JUMP_PORT: go through an OpenSSH jump host first)
"""
import asyncio
import statistics
import sys
import time

import asyncssh


async def main(port: int, key: str, user: str, jump: int | None) -> None:
    opts = dict(known_hosts=None, client_keys=[key], username=user)  # benchmark on loopback only
    tunnel = await asyncssh.connect("127.0.0.1", jump, **opts) if jump else None
    async with asyncssh.connect("127.0.0.1", port, tunnel=tunnel, **opts) as conn:
        proc = await conn.create_process("stty raw -echo; cat", term_type="xterm", encoding=None)
        proc.stdin.write(b"x")
        await proc.stdout.readexactly(1)
        samples = []
        for _ in range(300):
            t = time.perf_counter()
            proc.stdin.write(b"x")
            await proc.stdout.readexactly(1)
            samples.append((time.perf_counter() - t) * 1000)
        proc.close()
    if tunnel:
        tunnel.close()
    print(f"{statistics.median(samples):.3f}")


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(int(a[0]), a[1], a[2], int(a[3]) if len(a) > 3 else None))
