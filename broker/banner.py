"""The login banner on interactive shells: which lease, which GPUs, the time left and how to extend.

Only for a terminal shell (not exec, sftp, scp or forwards); one screen of plain text, bold only when
the renter's client sent no NO_COLOR and its terminal is not dumb. /etc/shellrent/lease in the
container stays the machine-readable form.
"""
import time

from shellrent.common import protocol

from .leases import format_duration
from .views import auto_text


def text(lease: dict, broker: tuple[str, int], env: dict, now: float | None = None) -> str:
    """The banner for a lease record, with CRLF line ends (the renter's terminal is in raw mode)."""
    now = time.time() if now is None else now
    gpus = lease.get("gpus") or []
    model = protocol.printable(str(lease.get("gpu_name") or "GPU"))[:64]
    what = f"{len(gpus)} x {model}" if gpus else "no GPU"
    left = max(0, lease["ends_at"] - now)
    ends = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(lease["ends_at"]))
    host, port = broker
    ctl = f"ssh{'' if port == 22 else f' -p {port}'} ctl@{host}"
    plain = bool(env.get("NO_COLOR")) or env.get("TERM", "") == "dumb"  # no-color.org: set and not empty
    bold, off = ("", "") if plain else ("\x1b[1m", "\x1b[0m")
    lines = [f"{bold}shellrent lease {lease['id']}{off}: {what} on {protocol.printable(lease['host'])[:32]}",
             f"time left {format_duration(left) if left else 'none'}, ends {ends}; more: {ctl} extend 1h",
             *([f"auto-extend {protocol.printable(auto_text(lease))[:200]} (off: {ctl} extend {lease['id']} --auto off)"]
               if lease.get("auto") else []),
             "jobs that must outlive this connection: tmux new -A -s main (tmux sessions survive a drop)",
             ""]
    return "\r\n".join(lines) + "\r\n"
