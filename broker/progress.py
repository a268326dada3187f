"""A rent's start-up as the renter sees it: lines of text, and an image pull's progress drawn as a bar
redrawn in place on a terminal, or as plain lines otherwise (one each PLAIN_EVERY seconds and at each
finished layer), so that a log or a script reading stderr gets a few lines, not a stream of redraws."""
import time

from shellrent.common import protocol

BAR = 24
PLAIN_EVERY = 2.0
REDRAW_EVERY = 0.2  # a host's events may come by the thousand: a terminal is redrawn 5 times a second at most
BACKLOG = 64 << 10  # bytes not yet sent to the renter past which progress is dropped (a slow reader)


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f}"


def pull_line(view: dict, bar: bool) -> str:
    """'pulling IMAGE [#####-----] 2/3 layers 4.1/6.0 MB' (without the bar: 'pulling IMAGE: ...')."""
    layers = f"{view['done']}/{view['layers']} layers, {megabytes(view['bytes'])}/{megabytes(view['total'])} MB"
    if not bar:
        return f"pulling {view['image']}: {layers}"
    filled = round(BAR * view["bytes"] / view["total"]) if view["total"] else 0
    return f"pulling {view['image']} [{'#' * filled}{'-' * (BAR - filled)}] {layers}"


def check_view(event: dict) -> dict:
    """A host's pull.progress event, checked: WireError on anything out of shape."""
    view = {"image": protocol.image(event.get("image"))}
    for key, most in (("layers", 10_000), ("done", 10_000), ("bytes", 1 << 50), ("total", 1 << 50)):
        if not protocol.number_in(event.get(key), 0, most, True):
            raise protocol.WireError(f"bad pull progress: {key}")
        view[key] = event[key]
    if view["done"] > view["layers"] or view["bytes"] > view["total"]:
        raise protocol.WireError("bad pull progress: more done than there is")
    return view


class StartProgress:
    """Called with a line of text or a pull's progress view; write(bytes) sends to the renter.
    Never raises: a renter who has gone does not stop the start."""

    def __init__(self, write, terminal: bool, backlog=lambda: 0):
        self._write = write
        self._terminal = terminal
        self._backlog = backlog  # bytes written and not yet sent
        self._drawn = 0  # length of the bar line now on the terminal (0: none)
        self._shown: dict[str, tuple[float, int]] = {}  # image -> (when last shown, most layers done shown)

    def __call__(self, item) -> None:
        try:
            if isinstance(item, dict):
                self._pull(item)
            else:
                self._line(str(item))
        except Exception:  # the channel has closed
            pass

    def _line(self, text: str) -> None:
        self._end_bar()
        self._send(text + "\n")

    def _pull(self, view: dict) -> None:
        """Shown when a layer more is done, or after a while: REDRAW_EVERY on a terminal, PLAIN_EVERY
        otherwise; never while the renter has not read what was sent."""
        last, done = self._shown.get(view["image"], (0.0, -1))
        now = time.monotonic()
        if (view["done"] <= done and now - last < (REDRAW_EVERY if self._terminal else PLAIN_EVERY)) \
                or self._backlog() > BACKLOG:
            return
        self._shown[view["image"]] = (now, max(done, view["done"]))
        if self._terminal:
            text = protocol.printable(pull_line(view, bar=True))
            pad = " " * max(0, self._drawn - len(text))
            self._drawn = len(text)
            self._write(("\r" + text + pad).encode())
        else:
            self._send(pull_line(view, bar=False) + "\n")

    def _end_bar(self) -> None:
        if self._drawn:
            self._drawn = 0
            self._write(b"\r\n")

    def _send(self, text: str) -> None:
        text = protocol.printable(text)
        self._write((text.replace("\n", "\r\n") if self._terminal else text).encode())
