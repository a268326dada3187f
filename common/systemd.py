"""systemd units for `broker service install` and `hostd service install`: written, or only printed."""
import shlex
import sys
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")


class UnitError(ValueError):
    """A unit cannot be written for these paths; str() says why."""


def _exec(argv: list[str]) -> str:
    """ExecStart's value: shell-quoted, with systemd's own % and $ expansions escaped."""
    for arg in argv:
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in arg):
            raise UnitError(f"{arg!r}: a path for a systemd unit cannot hold control characters")
    return shlex.join(argv).replace("%", "%%").replace("$", "$$")


def private_tmp_ok(home: Path) -> bool:
    """Whether PrivateTmp would leave the home visible (it hides /tmp and /var/tmp)."""
    real = home.resolve()
    return not any(real.is_relative_to(d) for d in (Path("/tmp").resolve(), Path("/var/tmp").resolve()))


def unit(description: str, argv: list[str], after: list[str], service: dict[str, str], name: str) -> str:
    """A service unit that restarts on failure and starts at boot; /etc/default/NAME, when it exists,
    sets its environment (BROKER_* or HOSTD_* settings)."""
    lines = ["[Unit]", f"Description={description}", f"After={' '.join(['network-online.target', *after])}",
             "Wants=" + " ".join(["network-online.target", *after]), "",
             "[Service]", "Type=simple", f"EnvironmentFile=-/etc/default/{name}", f"ExecStart={_exec(argv)}",
             "Restart=on-failure", "RestartSec=5", *(f"{k}={v}" for k, v in service.items()), "",
             "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def program(name: str) -> str:
    """The absolute path of this process's own command (broker or hostd), for ExecStart."""
    ran = Path(sys.argv[0])
    return str(ran.resolve()) if ran.name == name else str(Path(sys.executable).parent / name)


def install(name: str, text: str, unit_dir: Path, only_print: bool) -> str:
    """Write the unit (0644) unless only printing; returns what to tell the operator."""
    path = unit_dir / f"{name}.service"
    if only_print:
        return text
    unit_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)
    return (f"wrote {path}:\n\n{text}\nnow run: systemctl daemon-reload && systemctl enable --now {name}\n")
