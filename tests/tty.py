"""Drive an interactive OpenSSH client inside a private tmux server: type keys, read the screen."""
import shlex
import subprocess
import uuid

from .cluster import wait_for


class Terminal:
    """One tmux session on its own socket running a command; width x height."""

    def __init__(self, argv: list[str], width: int = 100, height: int = 30):
        self.sock = f"shellrent-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                   " ".join(shlex.quote(a) for a in argv) + "; echo EXITED=$?; sleep 60")

    def _tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, check=True,
                              timeout=30).stdout.decode()

    def type(self, text: str, enter: bool = True) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "t", "Enter")

    def key(self, name: str) -> None:
        self._tmux("send-keys", "-t", "t", name)

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def wait(self, text: str, timeout: float = 20) -> str:
        return wait_for(lambda: text in self.screen() and self.screen(), timeout, what=f"{text!r} on screen")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True)
