"""systemd units for `broker service install` and `hostd service install`: written, or only printed."""
import shlex
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")


def unit(description: str, argv: list[str], after: list[str], service: dict[str, str]) -> str:
    """A service unit that restarts on failure and starts at boot."""
    lines = ["[Unit]", f"Description={description}", f"After={' '.join(['network-online.target', *after])}",
             "Wants=network-online.target", *(f"Requires={a}" for a in after), "",
             "[Service]", "Type=simple", f"ExecStart={shlex.join(argv)}", "Restart=on-failure", "RestartSec=5",
             *(f"{k}={v}" for k, v in service.items()), "",
             "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


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
