"""A Docker socket in front of the real one that can hold requests: a stuck engine call on demand.

Every request is passed through unchanged, except those whose bytes mention a held pattern (a lease
id, a container id): their connection is kept open and nothing is forwarded until release(), as
an engine stuck on a hung container would behave.
"""
import socket
import threading


class StallProxy:
    def __init__(self, path, upstream: str = "/var/run/docker.sock"):
        self.path = str(path)
        self.upstream = upstream
        self.patterns: set[str] = set()
        self.held: list[tuple[socket.socket, socket.socket, bytes]] = []
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []  # every socket, closed by close()
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.bind(self.path)
        self._sock.listen(256)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket):
        up = socket.socket(socket.AF_UNIX)
        with self._lock:
            self._open += [client, up]
        up.connect(self.upstream)
        threading.Thread(target=self._pipe, args=(up, client, False), daemon=True).start()
        self._pipe(client, up, True)

    def _pipe(self, src: socket.socket, dst: socket.socket, inspect: bool):
        try:
            while data := src.recv(65536):
                with self._lock:
                    if inspect and any(p.encode() in data for p in self.patterns):
                        self.held.append((src, dst, data))
                        return  # held: nothing more is read or forwarded until release()
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def hold(self, pattern: str) -> None:
        with self._lock:
            self.patterns.add(pattern)

    def release(self) -> None:
        """Stop holding: pass every held request on and carry on as a plain proxy."""
        with self._lock:
            self.patterns.clear()
            held, self.held = self.held, []
        for src, dst, data in held:
            try:
                dst.sendall(data)
            except OSError:
                continue
            threading.Thread(target=self._pipe, args=(src, dst, True), daemon=True).start()

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            for sock in self._open:
                sock.close()
