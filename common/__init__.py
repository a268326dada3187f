"""What broker and hostd share besides keys: the wire protocol between them (protocol), fault
points for tests (faults), the metrics endpoint (metrics) and systemd units (systemd)."""
