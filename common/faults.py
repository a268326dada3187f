"""Fault points: named places in the broker and hostd where a test makes the process die, wait or
see a skewed clock, so that a fault lands at an exact step instead of at a lucky moment.

Off unless the environment names some: SHELLRENT_FAULTS="release.settled=kill,clock=600". Actions:
kill (SIGKILL to this process, as `kill -9` would), sleep:SECONDS, and for `clock` a number of
seconds added to hostd's whole clock (hostd.clock; the engine's stamps are taken as on that clock). Whoever sets a process's environment already controls it,
so this gives nobody anything new.
"""
import asyncio
import os
import signal

ENV = "SHELLRENT_FAULTS"


def _parse(text: str) -> dict[str, str]:
    spec = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, action = item.partition("=")
        spec[name] = action or "kill"
    return spec


_SPEC = _parse(os.environ.get(ENV, ""))


async def point(name: str) -> None:
    """Do what the environment asks at this point; nothing when it asks nothing."""
    action = _SPEC.get(name)
    if action is None:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action.startswith("sleep:"):
        await asyncio.sleep(float(action[6:]))


def clock_offset() -> float:
    """Seconds hostd's clock is off (a provider's wrong clock)."""
    return float(_SPEC.get("clock", 0))
