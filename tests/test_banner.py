"""The login banner's text: one screen, the facts a renter needs, colour only where wanted."""

from shellrent.broker import banner

LEASE = {"id": "a1b2c3d4", "host": "pc1", "gpus": ["GPU-a", "GPU-b"], "gpu_name": "RTX 4090",
         "ends_at": 1_800_000_000.0}


def test_the_banner_says_which_lease_gpus_time_left_end_and_how_to_extend():
    text = banner.text(LEASE, ("gpu.example.org", 2222), {"NO_COLOR": "1"}, now=1_800_000_000.0 - 5400)
    lines = text.split("\r\n")
    assert lines[0] == "shellrent lease a1b2c3d4: 2 x RTX 4090 on pc1"
    assert lines[1] == "time left 1h30m, ends 2027-01-15 08:00 UTC; more: ssh -p 2222 ctl@gpu.example.org extend 1h"
    assert "tmux new -A -s main" in lines[2] and len(lines) <= 5 and "\x1b" not in text


def test_bold_only_for_a_colour_terminal_and_host_text_made_printable():
    lease = {**LEASE, "gpus": [], "host": "evil\x1b]0;x\x07", "gpu_name": None}
    text = banner.text(lease, ("b", 22), {"TERM": "xterm-256color"}, now=0)
    assert text.startswith("\x1b[1mshellrent lease a1b2c3d4\x1b[0m: no GPU on evil\\x1b]0;x\\x07")
    assert "more: ssh ctl@b extend 1h" in text
    assert "\x1b[1m" not in banner.text(LEASE, ("b", 22), {"TERM": "dumb"}, now=0)
    assert "\x1b[1m" in banner.text(LEASE, ("b", 22), {"NO_COLOR": ""}, now=0)  # set but empty: colour
    assert "time left none" in banner.text(LEASE, ("b", 22), {}, now=2e9)


def test_the_banner_says_auto_extend_and_why_it_stops():
    lease = {**LEASE, "auto": 3600}
    lines = banner.text(lease, ("b", 22), {"NO_COLOR": "1"}, now=0).split("\r\n")
    assert lines[2] == "auto-extend on, by 1h (off: ssh ctl@b extend a1b2c3d4 --auto off)"
    stopped = banner.text({**lease, "auto_note": "not enough credit\x1b[2J"}, ("b", 22), {}, now=0)
    assert "auto-extend on, by 1h; not extending: not enough credit\\x1b[2J (off:" in stopped
    assert "auto-extend" not in banner.text(LEASE, ("b", 22), {}, now=0)
