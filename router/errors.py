"""The one exception tree of weave-router, split by who is at fault.

* :class:`LocalProtocolError`: our own code misused an object (a bug on this side).
* :class:`RemoteProtocolError`: a peer sent something wrong; the connection to it ends,
  the router lives on. :class:`DecodeError` is the one error every ``decode_*_untrusted``
  raises; :class:`HandshakeError` says whether the peer should ever be retried.
* :class:`BrokenError`: an invariant of ours is broken (state is suspect).
* :class:`ClosedError`: the object was used after it was closed.
* :class:`KernelError`: a netlink or socket operation failed; carries ``errno``.
* :class:`ConfigError`: the user gave a bad flag or value; the message names it and is
  printed as one line before a non-zero exit.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error weave-router raises on purpose."""


class LocalProtocolError(RouterError):
    """This side misused an API (e.g. sending before the handshake finished)."""


class RemoteProtocolError(RouterError):
    """The remote peer misbehaved; the connection to it is closed with this reason."""


class DecodeError(RemoteProtocolError):
    """Untrusted bytes did not decode: the only error a ``decode_*_untrusted`` raises."""


class HandshakeError(RemoteProtocolError):
    """The connection handshake failed.

    ``retry`` is False for failures that will never go away by trying again
    (connecting to ourself, a name collision); the connection maker then stops
    retrying that target.
    """

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class BrokenError(RouterError):
    """An internal invariant does not hold."""


class ClosedError(RouterError):
    """The object was used after being closed."""


class KernelError(RouterError):
    """A kernel operation failed; ``errno`` says how."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(f"{message} (errno {errno})")
        self.errno = errno


class ConfigError(RouterError):
    """A user-supplied flag or value is invalid; the message names it."""
