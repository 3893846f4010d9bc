"""The ciphers of the encrypted sleeve, and how two peers agree on one.

An encrypted connection seals its TCP control frames and its UDP heartbeats with NaCl
secretbox under the session key (:mod:`router.crypto.keys`). Its *frames* (sleeve types 2
and 3, the data plane's traffic) use one of two AEAD ciphers:

``aes256gcm``  AES-256-GCM, preferred when the CPU has AES and carry-less multiply
               instructions (the data plane runs it through OpenSSL at several times
               secretbox's speed). Its key is derived from the session key, so no key is
               ever used by two algorithms::

                   frame key = BLAKE2b-256(key = session key,
                                           message = "weave-router sleeve aes256gcm")

               12-byte nonce: ``01 | direction | 00 00 | counter (8, big-endian)``, the
               same fields as the secretbox nonce of :mod:`router.crypto.nonces`.
``secretbox``  XSalsa20-Poly1305 under the session key itself and the 24-byte UDP nonce
               of :func:`router.crypto.nonces.make_nonce`. Every version supports it.

Both put the 16-byte tag before the ciphertext (``MAC || ciphertext``), so the sleeve
layout and its overhead do not depend on the cipher.

Agreement: each side offers its ciphers in the sleeve's handshake parameters
(``"ciphers": "aes256gcm secretbox"``); both pick the first of :data:`PREFERENCE` that
both offer (:func:`choose`), so they agree without another round trip. A peer that
offers nothing (an older version) gets secretbox.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import nacl.bindings
import nacl.encoding
import nacl.exceptions
import nacl.hash

from router.crypto.keys import KEY_SIZE, MAC_SIZE, SessionKey
from router.crypto.nonces import MAX_COUNTER, Transport, make_nonce
from router.errors import DecodeError, LocalProtocolError

__all__ = [
    "AES256GCM",
    "PREFERENCE",
    "SECRETBOX",
    "FrameCipher",
    "choose",
    "frame_key",
    "gcm_nonce",
    "hardware_aes",
    "offered",
]

AES256GCM = "aes256gcm"
SECRETBOX = "secretbox"
PREFERENCE = (AES256GCM, SECRETBOX)  # best first
GCM_NONCE_SIZE = 12
_GCM_LABEL = b"weave-router sleeve aes256gcm"
_MAX_OFFER = 256  # characters of a peer's offer we look at


def hardware_aes(cpuinfo: str | None = None) -> bool:
    """Does this CPU have AES and PCLMULQDQ (what makes AES-GCM fast and constant-time)?

    ``cpuinfo``: the text of ``/proc/cpuinfo`` (read when None).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return {"aes", "pclmulqdq"} <= flags
    return False


@functools.cache
def _this_cpu_has_aes() -> bool:
    return hardware_aes()


def offered(*, aes: bool | None = None) -> tuple[str, ...]:
    """What this router offers, best first: AES-256-GCM only where the CPU runs it in
    hardware (``aes``: override the CPU check, which reads /proc/cpuinfo once)."""
    fast = _this_cpu_has_aes() if aes is None else aes
    return PREFERENCE if fast else (SECRETBOX,)


def choose(ours: Sequence[str], theirs: object) -> str:
    """The cipher both ends use: the first of :data:`PREFERENCE` both offer.

    ``theirs`` is the peer's ``ciphers`` parameter as received (untrusted: anything but
    a space-separated text counts as "nothing offered"); secretbox when nothing else is
    common.
    """
    offer = set(theirs[:_MAX_OFFER].split()) if isinstance(theirs, str) else set()
    for cipher in PREFERENCE:
        if cipher in ours and cipher in offer:
            return cipher
    return SECRETBOX


def frame_key(session_key: bytes, cipher: str) -> bytes:
    """The key the data plane seals frames with under ``cipher``."""
    if len(session_key) != KEY_SIZE:
        raise LocalProtocolError(f"a session key has {KEY_SIZE} bytes")
    if cipher == SECRETBOX:
        return session_key
    if cipher == AES256GCM:
        return nacl.hash.blake2b(_GCM_LABEL, digest_size=KEY_SIZE, key=session_key,
                                 encoder=nacl.encoding.RawEncoder)
    raise LocalProtocolError(f"unknown cipher {cipher!r}")


def gcm_nonce(sender_high: bool, counter: int) -> bytes:
    """The 12-byte AES-GCM nonce of UDP message ``counter`` in one direction."""
    if not 0 <= counter <= MAX_COUNTER:
        raise LocalProtocolError(f"nonce counter out of range: {counter}")
    return bytes((int(Transport.UDP), 1 if sender_high else 0, 0, 0)) + counter.to_bytes(8, "big")


class FrameCipher:
    """Seals and opens sleeve frames with one cipher and its frame key (the pure-Python
    data plane's crypto; the compiled one does the same in C)."""

    __slots__ = ("_box", "_cipher", "_key")

    def __init__(self, cipher: str, key: bytes) -> None:
        """``key``: the frame key (:func:`frame_key`)."""
        if cipher not in PREFERENCE:
            raise LocalProtocolError(f"unknown cipher {cipher!r}")
        self._cipher = cipher
        self._box = SessionKey(key)  # checks the size; secretbox seals with it directly
        self._key = bytes(key)

    @property
    def cipher(self) -> str:
        return self._cipher

    def seal(self, sender_high: bool, counter: int, plaintext: bytes) -> bytes:
        """``MAC (16) || ciphertext`` of ``plaintext``."""
        if self._cipher == SECRETBOX:
            return self._box.seal(make_nonce(Transport.UDP, sender_high, counter), plaintext)
        sealed = nacl.bindings.crypto_aead_aes256gcm_encrypt(
            plaintext, None, gcm_nonce(sender_high, counter), self._key)
        return sealed[-MAC_SIZE:] + sealed[:-MAC_SIZE]

    def open(self, sender_high: bool, counter: int, sealed: bytes) -> bytes:
        """The plaintext; :class:`DecodeError` if it does not authenticate."""
        if self._cipher == SECRETBOX:
            return self._box.open(make_nonce(Transport.UDP, sender_high, counter), sealed)
        if len(sealed) < MAC_SIZE:
            raise DecodeError("sealed message shorter than its MAC")
        try:
            return bytes(nacl.bindings.crypto_aead_aes256gcm_decrypt(
                sealed[MAC_SIZE:] + sealed[:MAC_SIZE], None,
                gcm_nonce(sender_high, counter), self._key))
        except nacl.exceptions.CryptoError:
            raise DecodeError("sealed message failed authentication") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameCipher):
            return NotImplemented
        return self._cipher == other._cipher and self._box == other._box

    def __hash__(self) -> int:
        return hash((self._cipher, self._box))

    def __repr__(self) -> str:
        return f"FrameCipher({self._cipher}, <secret>)"
