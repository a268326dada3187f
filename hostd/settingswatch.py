"""hostd's settings as the provider last saved them (settings.json), reread when the file changes; the
GPU source follows the `fake_gpus` setting."""
import logging

from . import settings as settings_mod

log = logging.getLogger("shellrent.agent")


class SettingsWatch:
    """The settings in force and the GPU source they name; `current` is what the parts call."""

    def __init__(self, path, open_gpus):
        self.path = path
        self._open_gpus = open_gpus  # fake_gpus setting -> a GPU source (hostd.gpus)
        self.values = settings_mod.defaults()
        self.gpus = None
        self._mtime = None

    def current(self) -> dict:
        return self.values

    def gpu_source(self):
        return self.gpus

    def reload(self) -> bool:
        """Read settings.json if it changed since the last read; whether new settings are in force.
        A file that does not parse keeps the old settings (and says why once)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._mtime and self.gpus is not None:
            return False
        try:
            new = settings_mod.load(self.path)
        except settings_mod.SettingsError as exc:
            log.error("keeping the old settings: %s", exc)
            self._mtime = mtime
            return False
        if self.gpus is None or new["fake_gpus"] != self.values["fake_gpus"]:
            self.gpus = self._open_gpus(new["fake_gpus"])
        self.values, self._mtime = new, mtime
        return True
