"""Signals, freezing and messages for the processes of a lease's container, done from outside by pid
namespace (a part of hostd.runtime.Runtime): no program inside the container, which the renter owns,
takes part but the broadcast's, which runs detached."""
import logging
import os
import signal as signals

from docker.errors import APIError, DockerException, NotFound

from . import procfs
from .runtime_spec import BROADCAST, RuntimeError_

log = logging.getLogger("shellrent.runtime")


class Processes:
    def freeze(self, lease_id: str) -> None:
        """Freeze every process of a lease's container (the engine's pause: the cgroup freezer)."""
        try:
            self.client.api.pause(f"shellrent-{lease_id}")
        except NotFound:
            pass
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"freezing lease {lease_id}: {exc}") from None

    def signal_all(self, lease_id: str, signal: str = "TERM") -> int:
        """Send signal to every process of the lease's container but its init; returns how many.

        Done from outside, by pid namespace: no program inside the container (the renter owns
        those files) takes part."""
        init, pids = self._processes(lease_id)
        sig, sent = getattr(signals, f"SIG{signal}"), 0
        for pid in pids:
            if pid != init:
                try:
                    os.kill(pid, sig)
                    sent += 1
                except OSError:
                    continue  # gone meanwhile
        return sent

    def _processes(self, lease_id: str) -> tuple[int, list[int]]:
        """(host pid of the container's init, host pids of every process in its pid namespace)."""
        try:
            init = self.client.api.inspect_container(f"shellrent-{lease_id}")["State"]["Pid"]
        except NotFound:
            return 0, []
        except (APIError, DockerException) as exc:
            raise RuntimeError_(f"lease {lease_id}: {exc}") from None
        return init, self._pids_with(init, lease_id)

    @staticmethod
    def _pids_with(init: int, lease_id: str) -> list[int]:
        """Host pids of every process in the pid namespace of init (none when init is 0)."""
        try:
            return procfs.pid_namespace(init)
        except OSError as exc:
            raise RuntimeError_(f"lease {lease_id}: cannot read its pid namespace: {exc}") from None

    def broadcast(self, lease_id: str, message: str) -> None:
        """Write message on every terminal in the lease's container (sessions and tmux panes).

        This runs the container's own programs, which the renter controls: detached, so it never
        waits on them."""
        try:
            self.client.containers.get(f"shellrent-{lease_id}").exec_run(
                ["/bin/sh", "-c", BROADCAST, "sh", message], detach=True)
        except (NotFound, APIError, DockerException) as exc:
            log.info("warning lease %s: %s", lease_id, exc)
