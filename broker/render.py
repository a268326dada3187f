"""Tables for people, JSON for scripts: one place for both the operator CLI and `ssh ctl@`."""
import json
import time

from shellrent.common import protocol


def cell(v) -> str:
    if v is None:
        return "-"
    if type(v) is int:
        return str(v)
    if isinstance(v, float):
        if v > 1e9:
            return time.strftime("%Y-%m-%d %H:%M", time.gmtime(v))
        return f"{v:g}"
    text = str(v)
    if text.isprintable():  # no control, format or separator character: nothing to escape (the usual case)
        return text
    return protocol.printable(text).replace("\n", " ")


def table(rows: list[dict], cols: list[str], headers: list[str] | None = None) -> str:
    """Aligned columns with a header line; '(none)' for no rows."""
    if not rows:
        return "(none)\n"
    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    heads = [h.upper() for h in (headers or cols)]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths).format
    return "\n".join(fmt(*row).rstrip() for row in [heads, *cells]) + "\n"


def as_json(value) -> str:
    return json.dumps(value, sort_keys=True) + "\n"
