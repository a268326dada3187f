"""Image pulls. hostd pulls the images its provider lists (the `images` setting) in the background and
tells the broker which are here (the inventory's `ready`); a rent of a listed image not here yet joins
(or starts) its pull and hears its progress, read from the engine's pull events (the JSON lines behind
`docker pull`'s display).

One pull per image at a time, each in a thread of its own: the engine's pull has no read timeout, so a
stalled one is abandoned (its thread left to the engine) after IDLE seconds without an event.
"""
import asyncio
import logging
import re
import threading
import time

log = logging.getLogger("shellrent.pulls")

IDLE = 300  # seconds without a pull event before the pull is given up
RETRY = 600  # seconds before a failed background pull is tried again
AGAIN = 30  # seconds before a rent may start again a pull a rent started that failed (failed rents are free)
EVERY = 0.5  # seconds between progress reports to watchers (and at each finished layer)
LAYER = re.compile(r"[0-9a-f]{12}")


class PullError(Exception):
    """A pull failed; str() is one line saying why."""


def one_line(text) -> str:
    text = " ".join(str(text).split())
    return text[:300] or "the pull failed"


class Progress:
    """What a pull has done so far, from the engine's events."""

    def __init__(self, image: str):
        self.image = image
        self.layers: dict[str, list] = {}  # short layer id -> [bytes downloaded, bytes in all, done]

    def feed(self, event) -> None:
        """Take one event; PullError when it is the engine's report of a failure."""
        if not isinstance(event, dict):
            return
        if event.get("error") or event.get("errorDetail"):
            detail = event.get("errorDetail")
            raise PullError(one_line(event.get("error") or (detail.get("message") if isinstance(detail, dict)
                                                            else "") or "the engine reported an error"))
        status, layer = event.get("status"), event.get("id")
        if not isinstance(status, str) or not isinstance(layer, str) or not LAYER.fullmatch(layer):
            return  # "Pulling from ...", "Digest: ...", "Status: ..."
        state = self.layers.setdefault(layer, [0, 0, False])
        detail = event.get("progressDetail") if isinstance(event.get("progressDetail"), dict) else {}
        if status == "Downloading":
            current, total = detail.get("current"), detail.get("total")
            if isinstance(total, int) and total > 0:
                state[1] = total
            if isinstance(current, int) and current >= 0:
                state[0] = min(current, state[1] or current)
        elif status == "Download complete":
            state[0] = state[1]
        elif status in ("Pull complete", "Already exists"):
            state[0], state[2] = state[1], True

    def view(self) -> dict:
        """The numbers a renter sees: layers done of all, bytes downloaded of all known."""
        return {"image": self.image, "layers": len(self.layers), "done": sum(s[2] for s in self.layers.values()),
                "bytes": sum(s[0] for s in self.layers.values()), "total": sum(s[1] for s in self.layers.values())}


class _Pull:
    def __init__(self, image: str, future: asyncio.Future):
        self.progress = Progress(image)
        self.future = future
        self.watchers: list = []
        self.last_event = time.monotonic()
        self.sent = (0.0, -1)  # when the watchers last heard, and how many layers were done then
        self.by_rent = False


class Pulls:
    """The pulls of one hostd. `engine_pull(image, on_event)` runs a pull in the calling thread,
    calling on_event with each engine event (Runtime.pull); `changed()` is called when an image
    arrives (hostd sends its inventory again)."""

    def __init__(self, engine_pull, changed=lambda: None, idle: float = IDLE):
        self._engine_pull = engine_pull
        self._changed = changed
        self._idle = idle
        self._pulls: dict[str, _Pull] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # image -> (monotonic time, why)
        self._by_rent: dict[str, float] = {}  # image -> when a rent's pull of it last failed

    def failures(self) -> dict[str, str]:
        return {image: why for image, (_, why) in self._failed.items()}

    def pulling(self) -> list[dict]:
        return [p.progress.view() for p in self._pulls.values()]

    def keep(self, missing: list[str]) -> None:
        """Start background pulls of these listed images that are not here (each failed one again
        after RETRY seconds), and give up stalled ones. Runs on the event loop."""
        now = time.monotonic()
        for image, pull in list(self._pulls.items()):
            self._give_up_if_stalled(image, pull)
        for image in missing:
            failed = self._failed.get(image)
            if image not in self._pulls and (failed is None or now - failed[0] >= RETRY):
                self._start(image)

    async def pull(self, image: str, watch=None) -> None:
        """Wait until the image is here, pulling it unless a pull is under way; watch(view) hears
        its progress. PullError with one line when it fails."""
        if image not in self._pulls and time.monotonic() - self._by_rent.get(image, -AGAIN) < AGAIN:
            raise PullError(self._failed[image][1])  # a renter's rents do not make hostd hammer a registry
        pull = self._pulls.get(image) or self._start(image, by_rent=True)
        if watch and watch not in pull.watchers:  # the same watcher twice (hostd's relay) hears it once
            pull.watchers.append(watch)
            watch(pull.progress.view())
        try:
            while not pull.future.done():
                await asyncio.wait([pull.future], timeout=min(30.0, self._idle))
                self._give_up_if_stalled(image, pull)
            pull.future.result()
        finally:
            if watch in pull.watchers:
                pull.watchers.remove(watch)

    def _start(self, image: str, by_rent: bool = False) -> _Pull:
        loop = asyncio.get_running_loop()
        pull = self._pulls[image] = _Pull(image, loop.create_future())
        pull.by_rent = by_rent
        pull.future.add_done_callback(lambda f: f.exception())  # a background pull's failure is logged, not raised

        def event(ev):  # on the event loop
            if pull.future.done():
                return
            pull.last_event = time.monotonic()
            try:
                pull.progress.feed(ev)
            except PullError as exc:
                self._finish(image, pull, exc)
                return
            view = pull.progress.view()
            if time.monotonic() - pull.sent[0] >= EVERY or view["done"] != pull.sent[1]:
                pull.sent = (time.monotonic(), view["done"])
                for watch in list(pull.watchers):
                    watch(view)

        def run():  # in the pull's own thread
            error = None
            try:
                self._engine_pull(image, lambda ev: loop.call_soon_threadsafe(event, ev))
            except Exception as exc:  # the engine's refusal or a cut stream: one line for the renter
                error = PullError(one_line(getattr(exc, "explanation", None) or exc))
            try:
                loop.call_soon_threadsafe(self._finish, image, pull, error)
            except RuntimeError:  # the loop has closed: hostd is stopping
                pass

        log.info("pulling image %s", image)
        threading.Thread(target=run, name=f"pull {image}", daemon=True).start()
        return pull

    def _give_up_if_stalled(self, image: str, pull: _Pull) -> None:
        if not pull.future.done() and time.monotonic() - pull.last_event > self._idle:
            self._finish(image, pull, PullError(f"the engine sent nothing for {self._idle:.0f} s"))

    def _finish(self, image: str, pull: _Pull, error: Exception | None) -> None:
        if pull.future.done():
            return
        if self._pulls.get(image) is pull:
            del self._pulls[image]
        if error:
            log.warning("pulling image %s failed: %s", image, error)
            self._failed[image] = (time.monotonic(), str(error))
            if pull.by_rent:
                self._by_rent[image] = time.monotonic()
            pull.future.set_exception(error)
        else:
            log.info("pulled image %s (%.1f MB)", image, pull.progress.view()["total"] / 1e6)
            self._failed.pop(image, None)
            self._by_rent.pop(image, None)
            view = pull.progress.view()
            for watch in list(pull.watchers):
                watch(view)
            pull.future.set_result(None)
            self._changed()
