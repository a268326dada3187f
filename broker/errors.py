"""Domain errors: one line each, shown to the user as is."""


class BrokerError(Exception):
    """Something the user asked for cannot be done; str(exc) is the one-line reason."""


class NotFound(BrokerError):
    """A named renter, host, lease or token does not exist."""


class KeyTaken(BrokerError):
    """A public key is already registered (to this renter or another)."""


class Unavailable(BrokerError):
    """A host is offline or refused the request."""


class Refused(Unavailable):
    """The host answered a call and said no (as opposed to not answering)."""
