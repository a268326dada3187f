"""Tables for people, JSON for scripts: one place for both the operator CLI and `ssh ctl@`."""
import json
import time

from keys import wire


def cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v > 1e9:
            return time.strftime("%Y-%m-%d %H:%M", time.gmtime(v))
        return f"{v:g}"
    return wire.printable(str(v)).replace("\n", " ")


def table(rows: list[dict], cols: list[str], headers: list[str] | None = None) -> str:
    """Aligned columns with a header line; '(none)' for no rows."""
    if not rows:
        return "(none)\n"
    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    heads = [h.upper() for h in (headers or cols)]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True) + "\n"
