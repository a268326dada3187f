"""Domain errors: one line each, shown to the user as is."""

FULL = "the broker cannot write its records (its disk is full): nothing was changed; try again later"


class BrokerError(Exception):
    """Something the user asked for cannot be done; str(exc) is the one-line reason."""


class NotFound(BrokerError):
    """A named renter, host, lease or token does not exist."""


class KeyTaken(BrokerError):
    """A public key is already registered (to this renter or another)."""


class NoOffer(BrokerError):
    """No offer matches a rent (the caller may say why: query.why_none)."""


class Banned(BrokerError):
    """The operator banned this host: it is told so, and ends its leases itself."""


class Unavailable(BrokerError):
    """A host is offline or refused the request."""


class Refused(Unavailable):
    """The host answered a call and said no (as opposed to not answering)."""


class GpusTaken(Unavailable):
    """The GPUs a rent chose were taken meanwhile (through this broker or another); nothing was done."""


class Changed(BrokerError):
    """A record changed under a conditional write (another broker acted on it first); the transaction
    is rolled back and nothing was done."""


def changed(written: bool, what: str) -> None:
    """Raise Changed unless a conditional write (the store's expect_state) was written."""
    if not written:
        raise Changed(f"{what} changed while this was being done; nothing was changed: try again")
