"""The egress guard: lease containers reach the internet only (and what `egress_allow` adds), never
the provider's networks; installed whole at the first turn, checked and put back when another tool
flushed it, and failing closed (no lease starts while it is not in force)."""
import logging
import subprocess

from . import firewall

log = logging.getLogger("shellrent.agent")


class EgressGuard:
    def __init__(self, settings):
        self._settings = settings  # the current settings (a callable)
        self._installed = False    # written whole by this process at least once

    def install(self) -> str | None:
        """Install the egress policy; None, or why it is not in force (no lease starts until it is)."""
        allowed = self._settings()["egress_allow"]
        allow = firewall.parse_allow(allowed)
        try:
            firewall.install(allow)
        except (firewall.FirewallError, OSError, subprocess.SubprocessError) as exc:
            log.error("egress policy NOT in force, no lease starts until it is: %s", exc)
            return str(exc) or type(exc).__name__
        self._installed = True
        log.info("egress policy installed: lease containers reach the internet only%s",
                 f" and {allowed}" if allow else "")
        return None

    def in_force(self) -> str | None:
        """Check the egress rules are all there (another tool's firewall reload can flush them) and
        put them back if not; None, or why they are not in force. The first time, they are written
        whole (rules left by an earlier run may allow what the settings no longer do)."""
        if not self._installed:
            return self.install()
        try:
            why = firewall.missing()
        except (OSError, subprocess.SubprocessError) as exc:
            why = str(exc) or type(exc).__name__
        if why is None:
            return None
        log.warning("egress rules were not in place (%s): installing them again", why)
        return self.install() or firewall.missing()
