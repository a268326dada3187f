"""Double-entry bookkeeping rules, pure. The store posts what these return, atomically and once.

Accounts: renter:NAME (spendable credit), hold:NAME (credit held for live leases),
provider:HOST (earnings), platform:fees, world:deposits (where operator credit comes from),
platform:vouchers (where redeemed vouchers' credit comes from).
Every transaction's entries sum to zero; renter and hold accounts never go below zero, nor does the
provider account of a renter's own host (store.sql_ledger).
"""
from .errors import BrokerError

Entries = list[tuple[str, int]]
NON_NEGATIVE = ("renter:", "hold:")


class LedgerError(BrokerError):
    """A transaction would break a ledger rule (e.g. not enough credit)."""


def renter(name: str) -> str:
    return f"renter:{name}"


def hold_account(name: str) -> str:
    return f"hold:{name}"


def provider(host: str) -> str:
    return f"provider:{host}"


FEES = "platform:fees"
WORLD = "world:deposits"
VOUCHERS = "platform:vouchers"
PROVIDERS = "provider:"  # every provider account starts so


# Transaction keys: each is posted at most once (the store refuses a key twice), which is what makes
# settling, holding and correcting idempotent however often a step is retried.
def settle_key(lease: str) -> str:
    """A lease's settlement (or its full refund when it failed to start): one per lease."""
    return f"settle:{lease}"


def hold_key(lease: str) -> str:
    return f"hold:{lease}"


def extend_key(lease: str, n: int) -> str:
    return f"extend:{lease}:{n}"


def undo_key(lease: str, n: int) -> str:
    """Extension n taken back (the host refused it)."""
    return f"extend-undo:{lease}:{n}"


def adjust_key(lease: str, charge: int) -> str:
    """A settled lease corrected down to `charge`: once per new charge."""
    return f"adjust:{lease}:{charge}"


def deposit_key(nonce: str) -> str:
    return f"deposit:{nonce}"


def voucher_key(code_hash: str) -> str:
    return f"voucher:{code_hash}"


def voucher(name: str, amount: int) -> Entries:
    """A voucher redeemed by a renter."""
    if amount <= 0:
        raise LedgerError("amount must be more than zero")
    return [(VOUCHERS, -amount), (renter(name), amount)]


def deposit(name: str, amount: int) -> Entries:
    """Operator credits a renter."""
    if amount <= 0:
        raise LedgerError("amount must be more than zero")
    return [(WORLD, -amount), (renter(name), amount)]


def hold(name: str, amount: int) -> Entries:
    """Set credit aside for a lease (or its extension)."""
    return [(renter(name), -amount), (hold_account(name), amount)]


def release(name: str, amount: int) -> Entries:
    """Give held credit back (an extension that did not happen)."""
    return [(hold_account(name), -amount), (renter(name), amount)]


def settle(name: str, host: str, held: int, charge: int, fee_percent: int) -> Entries:
    """Close a lease's hold: the charge goes to the provider less the platform fee; the rest back."""
    if not 0 <= charge <= held:
        raise LedgerError(f"charge {charge} outside the hold {held}")
    fee = charge * fee_percent // 100
    entries = [(hold_account(name), -held), (provider(host), charge - fee), (FEES, fee),
               (renter(name), held - charge)]
    return [(a, v) for a, v in entries if v]


def adjust(name: str, host: str, charged: int, charge: int, fee_percent: int) -> Entries:
    """Refund part of a settled charge (it was charged, it should have been charge), with the
    provider's and the platform's shares taken back as settle split them."""
    if not 0 <= charge < charged:
        raise LedgerError(f"a correction from {charged} to {charge} refunds nothing")
    fee_back = charged * fee_percent // 100 - charge * fee_percent // 100
    entries = [(provider(host), -(charged - charge - fee_back)), (FEES, -fee_back), (renter(name), charged - charge)]
    return [(a, v) for a, v in entries if v]


def credits_needed(have: int, need: int) -> str:
    from .leases import credits
    if credits(need) == credits(have):  # two decimals would read the same: say them exactly
        return f"this needs {need / 1e6:.6f} credits and the balance is {have / 1e6:.6f}"
    return f"this needs {credits(need)} credits and the balance is {credits(have)}"


def check(entries: Entries) -> None:
    """Raise unless the entries balance."""
    if sum(v for _, v in entries) != 0:
        raise LedgerError(f"unbalanced transaction {entries}")
