"""The offer query language: a strict, compatible subset of vast.ai's.

    gpu_name=RTX_4090 num_gpus>=2 gpu_ram>=24 dph<=2.5 geolocation in [DE,FR] -o 'dph,gpu_ram-'

Space-separated `field op value` comparisons that must all hold. `_` in a string is a space;
gpu_name compares without regard to case.
`field=any` drops every filter on that field so far, defaults included. Unknown fields, bad operators,
bad values and leftover text are errors that name the token.
"""
import math
import operator
import re
from dataclasses import dataclass

from .errors import BrokerError

NUMERIC = {"num_gpus", "gpu_ram", "gpu_total_ram", "cpu_cores", "cpu_ram", "disk_space", "dph",
           "reliability", "cuda_vers", "driver_version", "tflops", "inet_down", "inet_up"}
UNCAPPED = {"inet_down", "inet_up"}  # None: no cap, compared as infinitely fast
TEXT = {"gpu_name", "geolocation", "host_id"}
CASELESS = {"gpu_name"}  # RTX_4090 = rtx_4090: compared lowercased on both sides
BOOL = {"verified"}
FIELDS = NUMERIC | TEXT | BOOL
DEFAULTS = "reliability>=0.9"

_OPS = {"<": operator.lt, "<=": operator.le, "=": operator.eq, "==": operator.eq, "!=": operator.ne,
        ">=": operator.ge, ">": operator.gt,
        "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}
_TOKEN = re.compile(r"\s*(?:(\[[^\]]*\]?)|([^\s\[]+))")
_COMPARE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(<=|>=|==|!=|=|<|>)(.+)$")


class QueryError(BrokerError):
    """A query or order could not be parsed; the message names the bad token."""


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: object

    def __call__(self, offer: dict) -> bool:
        have = offer.get(self.field)
        if have is None and self.field in UNCAPPED:
            have = math.inf
        if have is None:
            return False
        if self.field == "driver_version" and isinstance(have, str):
            have = _version(have)
        if self.field in CASELESS and isinstance(have, str):
            have = have.lower()
        return _OPS[self.op](have, self.value)

    def __str__(self) -> str:
        value = self.value
        if isinstance(value, frozenset):
            return f"{self.field} {self.op} [{','.join(sorted(map(_word, value)))}]"
        return f"{self.field}{self.op}{_word(value)}"


def _word(value) -> str:
    """A value as a query spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace(" ", "_")


def _version(text: str) -> float:
    """'550.54.14' -> 550.54 (what comparisons on driver_version use)."""
    parts = text.split(".")
    return float(".".join(parts[:2])) if parts[0].isdigit() else 0.0


def _cap(value):
    """A bandwidth field: None (no cap) compares as unlimited."""
    return math.inf if value is None else value


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise QueryError(f"cannot read query at {text[pos:]!r}")
        out.append(m.group(1) or m.group(2))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def _value(field: str, raw: str, token: str):
    if field in NUMERIC:
        try:
            value = float(raw) if raw.isascii() and "_" not in raw else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise QueryError(f"bad number {raw!r} in {token!r}")
        return value
    if field in BOOL:
        if raw.lower() not in ("true", "false", "1", "0"):
            raise QueryError(f"bad boolean {raw!r} in {token!r}: use true or false")
        return raw.lower() in ("true", "1")
    return raw.replace("_", " ").lower() if field in CASELESS else raw.replace("_", " ")


def _list(field: str, raw: str, token: str) -> frozenset:
    if not (raw.startswith("[") and raw.endswith("]")):
        raise QueryError(f"expected a list like [a,b] after {token!r}")
    items = [i.strip() for i in raw[1:-1].split(",") if i.strip()]
    if not items:
        raise QueryError(f"empty list in {token!r}")
    return frozenset(_value(field, i, token) for i in items)


def _check_field(field: str, token: str) -> None:
    if field not in FIELDS:
        raise QueryError(f"unknown field {field!r} in {token!r}")


def parse(text: str, defaults: str = DEFAULTS) -> list[Filter]:
    """Filters for a query (defaults first); QueryError naming the bad token."""
    filters: list[Filter] = []
    for part in (defaults, text):
        toks = _tokens(part or "")
        i = 0
        while i < len(toks):
            tok = toks[i]
            if i + 1 < len(toks) and toks[i + 1] in ("in", "notin"):
                _check_field(tok, tok)
                if i + 2 >= len(toks):
                    raise QueryError(f"missing list after {tok} {toks[i + 1]}")
                filters.append(Filter(tok, toks[i + 1], _list(tok, toks[i + 2], f"{tok} {toks[i + 1]}")))
                i += 3
                continue
            m = _COMPARE.match(tok)
            if not m:
                before = _COMPARE.match(toks[i - 1]) if i else None
                if before and before.group(1) in TEXT:
                    raise QueryError(f"cannot understand {tok!r}: a space inside a value is written _, "
                                     f"e.g. {toks[i - 1]}_{tok}")
                raise QueryError(f"cannot understand {tok!r}: expected FIELD OP VALUE, e.g. num_gpus>=2")
            field, op, raw = m.groups()
            _check_field(field, tok)
            if raw.startswith(("=", "<", ">", "!")):
                raise QueryError(f"bad operator in {tok!r}")
            if raw == "any" and op in ("=", "=="):
                filters = [f for f in filters if f.field != field]
            else:
                if field in TEXT | BOOL and op not in ("=", "==", "!="):
                    raise QueryError(f"operator {op} does not apply to {field} in {tok!r}")
                filters.append(Filter(field, op, _value(field, raw, tok)))
            i += 1
    return filters


def why_none(offers: list[dict], text: str) -> str:
    """Why a query matches no offer: how many there are, and the filters that remove them all."""
    if not offers:
        return "no GPUs are on offer right now"
    filters = parse(text)
    alone = [f for f in filters if not select(offers, [f])]
    if alone:
        return (f"{', '.join(map(str, alone))} {'matches' if len(alone) == 1 else 'match'} none of the "
                f"{len(offers)} offers")
    return f"each filter matches some of the {len(offers)} offers, but none matches all of: " + \
        " ".join(map(str, filters))


def parse_order(text: str | None) -> list[tuple[str, bool]]:
    """[(field, descending)] from 'dph,gpu_ram-'."""
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        desc = part.endswith("-")
        field = part.rstrip("-+")
        if field not in FIELDS:
            raise QueryError(f"unknown field {field!r} in order {text!r}")
        out.append((field, desc))
    return out


_PYOPS = {"<": "<", "<=": "<=", "=": "==", "==": "==", "!=": "!=", ">=": ">=", ">": ">",
          "in": "in", "notin": "not in"}


def compile_filters(filters: list[Filter]):
    """One function testing all filters, for speed over many offers.

    Field names are checked identifiers and values are bound as names, never pasted into the source."""
    if not filters:
        return lambda o: True
    env: dict = {"__builtins__": {}, "_version": _version, "_cap": _cap}
    parts = []
    for i, f in enumerate(filters):
        env[f"v{i}"] = f.value
        have = f"_version(o[{f.field!r}])" if f.field == "driver_version" else \
            f"o[{f.field!r}].lower()" if f.field in CASELESS else \
            f"_cap(o.get({f.field!r}))" if f.field in UNCAPPED else f"o[{f.field!r}]"
        parts.append(f"{have} {_PYOPS[f.op]} v{i}")
    test = eval("lambda o: " + " and ".join(parts), env)  # noqa: S307 - see docstring

    def match(offer: dict) -> bool:
        try:
            return test(offer)
        except (KeyError, TypeError, AttributeError):  # a missing or empty field matches nothing
            return False
    return match


def select(offers: list[dict], filters: list[Filter], order: list[tuple[str, bool]] = ()) -> list[dict]:
    """Offers passing every filter, sorted by order (stable, later keys weaker)."""
    match = compile_filters(filters)
    hits = [o for o in offers if match(o)]
    if order and all(f in NUMERIC - {"driver_version"} for f, _ in order):
        key = eval("lambda o: (" + "".join(f"{'-' if d else ''}o[{f!r}], " for f, d in order) + ")",
                   {"__builtins__": {}})  # noqa: S307 - checked field names only
        try:
            hits.sort(key=key)
            return hits
        except (KeyError, TypeError):
            pass
    for field, desc in reversed(order):
        hits.sort(key=lambda o: (o.get(field) is None, o.get(field) or 0), reverse=desc)
    return hits
