"""Logging for the daemons: every line of a log carries only printable text.

Strangers choose much of what gets logged (asyncssh's disconnect reasons quote their key-exchange
names, usernames, host events): a newline or an escape byte in it would forge a whole log line or
rewrite an operator's terminal. The message of every record is escaped with protocol.one_line; a
traceback (ours) keeps its lines, each escaped too.
"""
import logging
import sys

from .protocol import one_line, printable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLine(logging.Formatter):
    def formatMessage(self, record):
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def formatException(self, ei):
        return printable(super().formatException(ei))

    def formatStack(self, stack_info):
        return printable(super().formatStack(stack_info))


def setup(verbose: bool) -> None:
    """INFO (DEBUG with -v) on stderr; asyncssh's own chatter only with -v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine(FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    logging.getLogger("asyncssh").setLevel(logging.DEBUG if verbose else logging.WARNING)


def audit_handler(path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(OneLine("%(asctime)s %(message)s"))
    return handler
