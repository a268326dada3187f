"""A host's GPU stray reports reach the audit log, cleaned and rate-limited."""
import logging

from broker.hostsync import STRAYS_PER_MINUTE, HostSync


def test_stray_reports_are_audited_printable_and_at_most_a_minutes_worth(caplog):
    sync = HostSync()
    caplog.set_level(logging.INFO, logger="shellrent.audit")
    event = {"type": "gpu.stray", "gpu": "GPU-x\x1b[2J", "lease": "l1", "pid": 42, "where": "the host",
             "command": "evil\nforged line"}
    for i in range(STRAYS_PER_MINUTE + 50):
        sync._stray("pc1", event, 1000.0 + i * 0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == "shellrent.audit"]
    assert len(lines) == STRAYS_PER_MINUTE
    assert lines[0] == "gpu-stray host=pc1 gpu=GPU-x\\x1b[2J lease=l1 pid=42 where=the host command=evil\\nforged line"
    assert len(sync._strays["pc1"]) == STRAYS_PER_MINUTE + 1
    sync._stray("pc1", {**event, "pid": "x"}, 2000.0)  # a minute later: audited again
    last = caplog.records[-1].getMessage()
    assert last.startswith("gpu-stray host=pc1") and "pid=?" in last
