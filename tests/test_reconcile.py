"""Reconcile rules 1-8 and the push choice, table by table (broker/reconcile.py; no sockets, no store)."""
import pytest

from shellrent.broker.reconcile import Action, decide, next_push

HELLO = 1000.0
LID = "a1b2c3d4"


def ours(state="active", ends_at=2000.0, started=500.0, created=400.0, **kw):
    return {"id": LID, "state": state, "ends_at": ends_at, "started": started, "created": created,
            "host_ends_at": kw.get("host_ends_at", ends_at), "host_ended": kw.get("host_ended")}


def kinds(actions):
    return [(a.kind, a.at) if a.kind == "ended" else a.kind for a in actions]


@pytest.mark.parametrize("rule, mine, theirs, expect", [
    # 1: a lease the broker never made: the host removes it (unless it purged it already)
    ("1", None, {"state": "active"}, ["discard"]),
    ("1", None, {"state": "ended"}, ["discard"]),
    ("1 purged", None, {"state": "purged"}, []),
    # 2: both active, ends differ: the broker's end is told again
    ("2", ours(), {"state": "active", "ends_at": 1500.0}, ["downs", "retell_end"]),
    ("2 same end", ours(), {"state": "active", "ends_at": 2000.0}, ["downs"]),
    # 3: active here, over there at T: ended here at T (or now when the host gave no time)
    ("3 ended", ours(), {"state": "ended", "ended_at": 1200.0}, ["downs", ("ended", 1200.0)]),
    ("3 lost", ours(), {"state": "lost"}, ["downs", ("ended", None)]),
    ("3 purged", ours(), {"state": "purged", "ended_at": 1300}, ["downs", ("ended", 1300)]),
    ("3 bad time", ours(), {"state": "ended", "ended_at": "soon"}, ["downs", ("ended", None)]),
    # 4: over on both sides: settled with the host's time, GPUs freed; purged follows purged
    ("4", ours("ended"), {"state": "ended", "ended_at": 1100.0}, ["downs", ("ended", 1100.0)]),
    ("4 purged", ours("ended"), {"state": "purged"}, ["downs", ("ended", None), "purged"]),
    ("4 failed", ours("failed"), {"state": "lost"}, ["downs", ("ended", None)]),
    ("4 purged here", ours("purged"), {"state": "purged"}, ["downs", ("ended", None)]),
    # 5: over here, running there: stop it again
    ("5", ours("ended"), {"state": "active"}, ["downs", "restop"]),
    ("5 failed", ours("failed"), {"state": "starting"}, ["downs", "restop"]),
    # 6: starting here: the start call under way decides
    ("6", ours("starting"), {"state": "active"}, ["downs"]),
    ("6 pending", ours("pending"), {"state": "ended"}, ["downs"]),
])
def test_each_rule_for_a_lease_the_host_lists(rule, mine, theirs, expect):
    actions = decide({LID: mine} if mine else {}, {LID: theirs}, set(), HELLO)
    assert kinds(actions) == expect, rule
    assert all(a.lease == LID for a in actions)


def test_the_hosts_down_times_come_first_as_given():
    downs = [[1100.0, 1150.0], [1700.0, None]]
    actions = decide({LID: ours()}, {LID: {"state": "ended", "ended_at": 1800.0, "downs": downs}}, set(), HELLO)
    assert actions[0] == Action("downs", LID, downs=downs)  # a reprice on them sees them before the end


@pytest.mark.parametrize("rule, mine, in_flight, expect", [
    ("7", ours(), set(), ["missing"]),                                # active here, unknown there: ended
    ("7 in flight", ours(), {LID}, []),                               # its start call decides
    ("7 started after the hello", ours(started=HELLO), set(), []),    # not the host's to know yet
    ("7 created after the hello", ours(started=None, created=HELLO + 1), set(), []),
    ("8 ended", ours("ended"), set(), []),                            # the sync's stop hears "absent"
    ("8 failed", ours("failed"), set(), []),
    ("6 unlisted", ours("starting", started=None), set(), []),
])
def test_leases_the_host_does_not_list(rule, mine, in_flight, expect):
    assert kinds(decide({LID: mine}, {}, in_flight, HELLO)) == expect, rule


@pytest.mark.parametrize("entry", [
    {"BAD": {"state": "active"}},            # not a lease id
    {LID: "active"},                         # not an object
    {LID: {"state": "running"}},             # not a state
    {LID: {}},
])
def test_a_malformed_entry_is_only_logged(entry):
    assert kinds(decide({LID: ours("ended", started=HELLO)}, entry, set(), HELLO)) == ["malformed"]


def test_one_bad_entry_does_not_hide_the_others():
    other = "00ff00ff"
    actions = decide({LID: ours()}, {"x": 1, other: {"state": "active"}, LID: {"state": "lost"}}, set(), HELLO)
    assert kinds(actions) == ["malformed", "discard", "downs", ("ended", None)]
    assert [a.lease for a in actions[1:]] == [other, LID, LID]


@pytest.mark.parametrize("lease, op", [
    (ours(host_ends_at=1500.0), "lease.extend"),      # an end the host was not told
    (ours(host_ends_at=None), "lease.extend"),
    (ours(), None),                                   # told
    (ours("ended"), "lease.stop"),                    # its container not confirmed gone
    (ours("purged"), "lease.stop"),
    (ours("ended", host_ended=1200.0), None),
    (ours("failed"), "lease.discard"),                # a failed start's leftovers
    (ours("failed", host_ended=1.0), None),
    (ours("starting"), None),                         # the start call decides
    (ours("pending"), None),
])
def test_what_the_host_must_still_be_told(lease, op):
    assert next_push(lease) == op
