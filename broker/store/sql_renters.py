"""The store's renters, their keys and settings, in SQL both backends run (a part of
store.sqlite.Store and store.postgres.Store)."""
from ..errors import BrokerError, KeyTaken, NotFound


class Renters:
    """Renters and their public keys."""

    def add_renter(self, name: str, fingerprint: str, key: str) -> None:
        """Create a renter with one public key. The name and the key are locked first: two brokers
        making the same renter (two signups at once) make it once, and the other is told it exists."""
        with self.tx():
            self.lock(*sorted((f"renter-name:{name}", f"renter-key:{fingerprint}")))
            if self._count("renters", "name = ?", [name]):
                raise BrokerError(f"renter {name!r} already exists")
            self._check_key_free(fingerprint)
            self._insert("renters", {"name": name, "created": self.now()})
            self._insert("renter_keys", {"fingerprint": fingerprint, "renter": name, "key": key,
                                         "added": self.now()})

    def _check_key_free(self, fingerprint: str) -> None:
        row = self._sql("SELECT renter FROM renter_keys WHERE fingerprint = ?", [fingerprint]).fetchone()
        if row:
            raise KeyTaken(f"that key already belongs to renter {row[0]!r}")

    def renter_by_key(self, fingerprint: str) -> str | None:
        """The renter owning a key, or None."""
        row = self._sql("SELECT renter FROM renter_keys WHERE fingerprint = ?", [fingerprint]).fetchone()
        return row[0] if row else None

    def require_renter(self, name: str) -> None:
        if not self._count("renters", "name = ?", [name]):
            raise NotFound(f"unknown renter {name!r}")

    def renter_config(self, name: str) -> dict:
        """A renter's own settings: {"tmux": bool}."""
        row = self._sql("SELECT tmux FROM renters WHERE name = ?", [name]).fetchone()
        if row is None:
            raise NotFound(f"unknown renter {name!r}")
        return {"tmux": bool(row[0])}

    def set_renter_tmux(self, name: str, on: bool) -> None:
        self.require_renter(name)
        self._sql("UPDATE renters SET tmux = ? WHERE name = ?", [int(on), name])

    def renters(self) -> list[dict]:
        return list(self._rows(
            "SELECT r.name, r.created, count(k.fingerprint) AS keys FROM renters r "
            "LEFT JOIN renter_keys k ON k.renter = r.name GROUP BY r.name ORDER BY r.name"))


    def renter_keys(self, renter: str) -> list[dict]:
        return list(self._rows("SELECT fingerprint, key, added FROM renter_keys WHERE renter = ? ORDER BY added",
                                  [renter]))

    def add_key(self, renter: str, fingerprint: str, key: str) -> None:
        with self.tx():
            self.lock(f"renter-key:{fingerprint}")  # one key added by two renters at once: one has it
            self._check_key_free(fingerprint)
            self._insert("renter_keys", {"fingerprint": fingerprint, "renter": renter, "key": key,
                                         "added": self.now()})

    def remove_key(self, renter: str, fingerprint: str) -> None:
        with self.tx():
            keys = [k["fingerprint"] for k in self.renter_keys(renter)]
            if fingerprint not in keys:
                raise NotFound(f"no key {fingerprint} on your account")
            if len(keys) == 1:
                raise BrokerError("that is your only key; add another one first")
            self._sql("DELETE FROM renter_keys WHERE fingerprint = ?", [fingerprint])
