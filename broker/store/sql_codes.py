"""The store's single-use codes: signup codes and credit vouchers, kept only as hashes, each used once
by a conditional write (a part of store.sqlite.Store and store.postgres.Store)."""
from .. import ledger
from ..errors import BrokerError


class Codes:
    """Signup codes (one renter each) and vouchers (one credit each)."""

    def add_signup_codes(self, hashes: list[str], expires: float | None = None) -> None:
        with self.tx():
            for h in hashes:
                self._insert("signup_codes", {"hash": h, "created": self.now(), "expires": expires})

    def signup_with_code(self, code_hash: str, name: str, fingerprint: str, key: str) -> None:
        """Create a renter with a signup code, in one transaction: the code is used only if the
        renter is made, and only once however many sign up with it at the same moment."""
        with self.tx():
            now = self.now()
            used = self._sql("UPDATE signup_codes SET used = ?, renter = ? WHERE hash = ? AND used IS NULL "
                             "AND (expires IS NULL OR expires > ?) RETURNING hash",
                             [now, name, code_hash, now]).fetchall()
            if not used:
                row = self._sql("SELECT used FROM signup_codes WHERE hash = ?", [code_hash]).fetchone()
                raise BrokerError("unknown signup code" if not row else "that signup code was used already"
                                  if row[0] is not None else "that signup code has expired")
            self.add_renter(name, fingerprint, key)

    def add_vouchers(self, hashes: list[str], amount: int, expires: float | None) -> None:
        with self.tx():
            for h in hashes:
                self._insert("vouchers", {"hash": h, "amount": amount, "created": self.now(), "expires": expires})

    def redeem_voucher(self, code_hash: str, renter: str, now: float) -> int:
        """Credit a voucher's amount to renter once (a ledger transaction from the platform's voucher
        account); the amount."""
        with self.tx():
            row = self._sql("UPDATE vouchers SET redeemed = ?, renter = ? WHERE hash = ? AND redeemed IS NULL "
                            "AND (expires IS NULL OR expires > ?) RETURNING amount",
                            [now, renter, code_hash, now]).fetchall()
            if not row:
                old = self._sql("SELECT redeemed, expires FROM vouchers WHERE hash = ?", [code_hash]).fetchone()
                if old is None:
                    raise BrokerError("unknown voucher code")
                raise BrokerError("that voucher was redeemed already" if old[0] is not None
                                  else "that voucher has expired")
            amount = row[0][0]
            self.post(ledger.voucher_key(code_hash), "voucher", ledger.voucher(renter, amount), renter=renter,
                      memo="voucher", now=now)
            return amount

    def vouchers(self) -> list[dict]:
        return list(self._rows("SELECT substr(hash, 1, 12) AS id, amount, created, expires, redeemed, renter "
                               "FROM vouchers ORDER BY created, hash"))
