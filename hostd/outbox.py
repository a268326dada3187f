"""Events to the broker: sent on the control channel while one is attached, else kept (the last
1,000, inventory and pull progress excepted: they are sent afresh) until the next one attaches.
Local subscribers hear each event first (a helper forgotten, the GPU watchdog woken)."""


class Outbox:
    def __init__(self):
        self._sink = None
        self._pending: list[dict] = []
        self._subscribers: list = []

    def subscribe(self, fn) -> None:
        """fn(event) for every event, before it is sent."""
        self._subscribers.append(fn)

    def attach(self, sink) -> None:
        self._sink = sink
        for event in self._pending:
            sink.send(event)
        self._pending = []

    def detach(self, sink) -> None:
        if self._sink is sink:
            self._sink = None

    def emit(self, event: dict) -> None:
        for fn in self._subscribers:
            fn(event)
        if self._sink:
            self._sink.send(event)
        elif event["type"] not in ("inventory", "pull.progress"):
            self._pending = self._pending[-999:] + [event]
