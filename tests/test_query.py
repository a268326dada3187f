import pytest
from hypothesis import given, settings, strategies as st

from shellrent.broker import query
from shellrent.broker.query import QueryError

OFFERS = [
    {"id": "a", "gpu_name": "RTX 4090", "num_gpus": 2, "gpu_ram": 24.0, "dph": 0.8, "reliability": 0.99,
     "geolocation": "DE", "driver_version": "550.54.14", "verified": False, "host_id": "pc1"},
    {"id": "b", "gpu_name": "RTX 3060", "num_gpus": 1, "gpu_ram": 12.0, "dph": 0.1, "reliability": 0.95,
     "geolocation": "FR", "driver_version": "535.1", "verified": True, "host_id": "pc2"},
    {"id": "c", "gpu_name": "H100 SXM", "num_gpus": 8, "gpu_ram": 80.0, "dph": 20.0, "reliability": 0.5,
     "geolocation": "US", "driver_version": "550.2", "verified": True, "host_id": "pc3"},
]


def ids(text, order=None):
    return [o["id"] for o in query.select(OFFERS, query.parse(text), query.parse_order(order))]


@pytest.mark.parametrize("text, expected", [
    ("", ["a", "b"]),                               # default reliability>=0.9 hides c
    ("reliability=any", ["a", "b", "c"]),
    ("gpu_name=RTX_4090", ["a"]),
    ("num_gpus>=2 reliability=any", ["a", "c"]),
    ("gpu_ram>=24 dph<=2.5", ["a"]),
    ("geolocation in [DE,FR]", ["a", "b"]),
    ("geolocation notin [DE]", ["b"]),
    ("verified=true reliability=any", ["b", "c"]),
    ("driver_version>=540 reliability=any", ["a", "c"]),
    ("gpu_name!=RTX_3060", ["a"]),
    ("host_id=pc2", ["b"]),
])
def test_filters(text, expected):
    assert ids(text) == expected


def test_order():
    assert ids("reliability=any", "dph") == ["b", "a", "c"]
    assert ids("reliability=any", "gpu_ram-") == ["c", "a", "b"]
    assert ids("reliability=any", "verified-,dph") == ["b", "c", "a"]


@pytest.mark.parametrize("text, message", [
    ("gpu_nam=RTX", "unknown field 'gpu_nam' in 'gpu_nam=RTX'"),
    ("num_gpus=>2", "bad operator in 'num_gpus=>2'"),
    ("num_gpus>=two", "bad number 'two' in 'num_gpus>=two'"),
    ("num_gpus>=2 hello", "cannot understand 'hello'"),
    ("gpu_name>RTX", "operator > does not apply to gpu_name"),
    ("geolocation in DE", "expected a list like [a,b] after 'geolocation in'"),
    ("geolocation in", "missing list after geolocation in"),
    ("verified=maybe", "bad boolean 'maybe'"),
    ("geolocation in []", "empty list"),
])
def test_errors_name_the_token(text, message):
    with pytest.raises(QueryError) as info:
        query.parse(text)
    assert message in str(info.value)


def test_order_errors():
    with pytest.raises(QueryError, match="unknown field 'price_x' in order"):
        query.parse_order("dph,price_x-")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_parse_never_crashes(text):
    try:
        filters = query.parse(text)
    except QueryError as exc:
        assert str(exc)
    else:
        query.select(OFFERS, filters)


tokens = st.one_of(st.sampled_from(sorted(query.FIELDS)), st.text("abc_<>=![],.0123456789 ", max_size=6))


@settings(max_examples=500, deadline=None)
@given(st.lists(tokens, max_size=6).map("".join))
def test_errors_quote_part_of_the_input(text):
    try:
        query.parse(text)
    except QueryError as exc:
        quoted = str(exc).split("'")[1::2]
        assert any(q and q in text for q in quoted) or "missing list" in str(exc) or "empty list" in str(exc)


def test_ten_thousand_offers_fast_enough_to_matter():
    # Correctness at scale; the speed figure lives in scripts/bench_offers.py, not in a timed test.
    many = [dict(OFFERS[i % 3], id=str(i)) for i in range(10_000)]
    hits = query.select(many, query.parse("gpu_ram>=24 num_gpus>=2 reliability=any"), query.parse_order("dph"))
    assert len(hits) == 6667 and hits[0]["dph"] == 0.8


def test_gpu_name_matches_without_regard_to_case():
    assert ids("gpu_name=rtx_4090") == ["a"] and ids("gpu_name in [rtx_3060,h100_sxm] reliability=any") == ["b", "c"]
    assert ids("gpu_name!=rtx_3060") == ["a"]
    assert ids("geolocation=de") == []  # only gpu_name is caseless


def test_a_space_in_a_value_is_told_to_be_written_with_an_underscore():
    with pytest.raises(QueryError, match=r"cannot understand '4090': a space inside a value is written _, "
                                         r"e.g. gpu_name=RTX_4090"):
        query.parse("gpu_name=RTX 4090")
    with pytest.raises(QueryError, match="expected FIELD OP VALUE"):
        query.parse("num_gpus>=2 lots")


def test_an_empty_result_says_which_filter_removed_every_offer():
    assert query.why_none(OFFERS, "gpu_name=a100") == "gpu_name=a100 matches none of the 3 offers"
    assert query.why_none(OFFERS, "gpu_name=a100 dph<0.01") == \
        "gpu_name=a100, dph<0.01 match none of the 3 offers"
    assert query.why_none(OFFERS, "gpu_name=h100_sxm") == (
        "each filter matches some of the 3 offers, but none matches all of: reliability>=0.9 gpu_name=h100_sxm")
    assert query.why_none([], "") == "no GPUs are on offer right now"
