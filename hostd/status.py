"""hostd's status file (status.json, 0600): what `hostd status` and `hostd doctor` read of a running
hostd: connected or not and why, its host name, earnings, pulls, GPU problems and kills."""
import json
import os
import time

from .config import write_private


class StatusFile:
    def __init__(self, path):
        self._path = path
        self._fields = {"pid": os.getpid(), "connected": False}

    def get(self, key: str, default=None):
        return self._fields.get(key, default)

    def set(self, **fields) -> None:
        self._fields.update(fields, updated=time.time())
        write_private(self._path, json.dumps(self._fields))
