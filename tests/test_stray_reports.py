"""A host's GPU stray reports reach the audit log checked, quoted and rate-limited."""
import logging

import pytest

from shellrent.broker.hostevents import LINES_PER_MINUTE, STRAYS_PER_MINUTE, HostEvents
from shellrent.common import protocol

GPU = "GPU-5a7a6b90-4a1b-9c2d-77e1-000000000301"


def events() -> HostEvents:
    """Strays and bad events touch none of the collaborators."""
    return HostEvents(db=None, store=None, market=None, hosts=None, pulls=None, settlement=None, now=None)


EVENT = {"type": "gpu.stray", "gpu": GPU, "lease": "a14fbeaa", "pid": 42, "where": "the host",
         "command": "evil\nforged line pid=7 host=honest\x1b[2J\u202e"}


def test_stray_reports_are_audited_one_quoted_field_each_and_at_most_a_minutes_worth(caplog):
    sync = events()
    caplog.set_level(logging.INFO, logger="shellrent.audit")
    for i in range(STRAYS_PER_MINUTE + 50):
        sync.stray("pc1", EVENT, 1000.0 + i * 0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "shellrent.audit"]
    assert len(lines) == STRAYS_PER_MINUTE
    assert lines[0] == (f'gpu-stray host=pc1 gpu={GPU} lease=a14fbeaa pid=42 where="the host" '
                        'command="evil\\nforged line pid=7 host=hone"')
    assert len(sync.limits.recent[("GPU stray reports", "pc1")]) == STRAYS_PER_MINUTE + 1
    sync.stray("pc1", {**EVENT, "command": "x\x1b\u202e"}, 2000.0)  # a minute later: audited again
    assert caplog.records[-1].getMessage().endswith('command="x\\u001b\\u202e"')


@pytest.mark.parametrize("bad", [{"gpu": "GPU x lease=forged"}, {"lease": "../../x"}, {"pid": "1"}, {"pid": 0},
                                 {"pid": 10**100}, {"where": ["x"]}, {"command": None}])
def test_malformed_reports_are_refused(bad):
    with pytest.raises(protocol.WireError):
        events().stray("pc1", {**EVENT, **bad}, 1000.0)


async def test_a_host_flooding_bad_events_gets_a_minutes_worth_of_log_lines(caplog):
    sync = events()
    caplog.set_level(logging.INFO, logger="shellrent.service")
    for i in range(5000):
        await sync.event("pc1", {"type": "pull.progress", "image": "Bad Image", "layers": i})
        await sync.event("pc1", {"type": f"no.such.{i}"})
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == LINES_PER_MINUTE + 1
    assert lines[-1] == "host pc1: more than 60 bad events a minute: not logging the rest"
    assert lines[0] == "host pc1: ignoring a bad event: bad image 'Bad Image'"
