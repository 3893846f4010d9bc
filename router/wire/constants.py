"""Numbers of the TCP connection protocol: magic, versions, size limits, message tags.

Every limit here is a declared bound (see ``docs/wire-format.md``); a peer exceeding one
loses its connection. Sizes are in bytes. The protocol version range has one source,
:mod:`router.config`, and is re-exported here for the wire modules.
"""

from __future__ import annotations

from enum import IntEnum

from router.config import PROTOCOL_MAX_VERSION, PROTOCOL_MIN_VERSION

__all__ = [
    "FRAME_HEADER_SIZE",
    "MAGIC",
    "MAX_CBOR_DEPTH",
    "MAX_CHANNEL_LEN",
    "MAX_CONTAINER_ITEMS",
    "MAX_FRAME_SIZE",
    "MAX_HANDSHAKE_FRAME_SIZE",
    "MAX_NICKNAME_LEN",
    "MAX_OVERLAYS",
    "MAX_OVERLAY_KEYS",
    "MAX_OVERLAY_NAME_LEN",
    "MAX_OVERLAY_STR_LEN",
    "MESSAGE_MAX_DEPTH",
    "PREAMBLE_SIZE",
    "PROTOCOL_MAX_VERSION",
    "PROTOCOL_MIN_VERSION",
    "MessageTag",
]

#: First bytes each side sends on a new TCP connection (12 ASCII bytes).
MAGIC = b"weave-router"
#: Magic + minimum version (1 byte) + maximum version (1 byte).
PREAMBLE_SIZE = len(MAGIC) + 2

#: Length prefix of every frame: 4 bytes, big-endian unsigned.
FRAME_HEADER_SIZE = 4
#: Largest frame payload (after the length prefix, sealed MAC included): 4 MiB.
MAX_FRAME_SIZE = 4 * 1024 * 1024
#: Largest frame accepted before the handshake completes (Hello, Ready): 64 KiB, so an
#: unauthenticated peer cannot make us buffer megabytes.
MAX_HANDSHAKE_FRAME_SIZE = 64 * 1024

#: Deepest container nesting cbor.decode_untrusted accepts by default.
MAX_CBOR_DEPTH = 16
#: Most items in one CBOR array, or pairs in one map.
MAX_CONTAINER_ITEMS = 65536
#: Nesting depth of a control message (message array > overlays map > overlay map).
MESSAGE_MAX_DEPTH = 3

#: Gossip channel names: 1..32 characters of [A-Za-z0-9._-].
MAX_CHANNEL_LEN = 32
#: Nicknames (host names): at most 255 characters.
MAX_NICKNAME_LEN = 255
#: Hello.overlays: at most 16 overlays, each with at most 32 parameters.
MAX_OVERLAYS = 16
MAX_OVERLAY_KEYS = 32
#: Overlay names and parameter names: 1..32 characters of [A-Za-z0-9._-].
MAX_OVERLAY_NAME_LEN = 32
#: String-valued overlay parameters: at most 255 characters.
MAX_OVERLAY_STR_LEN = 255


class MessageTag(IntEnum):
    """The first element of every encoded message says which message it is."""

    HELLO = 1
    READY = 2
    HEARTBEAT = 3
    CONNECTION_ESTABLISHED = 4
    GOSSIP_UNICAST = 5
    GOSSIP_BROADCAST = 6
    GOSSIP = 7
