"""Per-connection key exchange and the session key that seals control frames and packets.

Both peers of a connection generate a fresh Curve25519 :class:`KeyPair` and exchange the
public halves in their ``Hello``. When both have the mesh password, each derives::

    session key = SHA-256( X25519(our_private, their_public) || password )   (32 bytes)

The X25519 shared secret is the same on both ends; the password makes a peer that does
not know it derive a different key, which the first sealed frame (``Ready``) exposes.

:meth:`SessionKey.seal` is NaCl secretbox (XSalsa20-Poly1305): the output is the 16-byte
Poly1305 MAC followed by the ciphertext (same length as the plaintext); the 24-byte
nonce is never sent on TCP (see ``router.crypto.nonces``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions

from router.errors import DecodeError, LocalProtocolError

__all__ = ["KEY_SIZE", "MAC_SIZE", "KeyPair", "SessionKey"]

KEY_SIZE = 32  # Curve25519 keys and secretbox keys, bytes
MAC_SIZE = 16  # Poly1305 tag prepended by seal(), bytes
_NONCE_SIZE = 24


@dataclass(frozen=True)
class KeyPair:
    """A Curve25519 key pair, fresh for every connection (never persisted)."""

    public: bytes
    private: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> KeyPair:
        """A new random key pair."""
        public, private = nacl.bindings.crypto_box_keypair()
        return cls(public=bytes(public), private=bytes(private))

    @classmethod
    def from_private(cls, private: bytes) -> KeyPair:
        """The pair for a given 32-byte private key (tests and golden vectors)."""
        if len(private) != KEY_SIZE:
            raise LocalProtocolError(f"a private key has {KEY_SIZE} bytes, got {len(private)}")
        public = nacl.bindings.crypto_scalarmult_base(private)
        return cls(public=bytes(public), private=bytes(private))


class SessionKey:
    """A 32-byte secretbox key shared by the two ends of one connection."""

    __slots__ = ("_raw",)

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise LocalProtocolError(f"a session key has {KEY_SIZE} bytes, got {len(raw)}")
        self._raw = bytes(raw)

    @classmethod
    def derive(cls, our_private: bytes, their_public: bytes, password: bytes) -> SessionKey:
        """SHA-256(X25519(our_private, their_public) || password).

        ``their_public`` comes from the peer: a wrong size or a low-order point (whose
        shared secret would be all zeros) raises :class:`DecodeError`.
        """
        if len(our_private) != KEY_SIZE:
            raise LocalProtocolError(f"a private key has {KEY_SIZE} bytes")
        if len(their_public) != KEY_SIZE:
            raise DecodeError(f"peer public key has {len(their_public)} bytes, not {KEY_SIZE}")
        try:
            shared = nacl.bindings.crypto_scalarmult(our_private, their_public)
        except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError) as exc:
            raise DecodeError(f"unusable peer public key: {exc}") from None
        return cls(hashlib.sha256(bytes(shared) + password).digest())

    @property
    def raw(self) -> bytes:
        """The 32 key bytes (for the data plane)."""
        return self._raw

    def seal(self, nonce: bytes, plaintext: bytes) -> bytes:
        """MAC (16 bytes) + ciphertext of ``plaintext`` under ``nonce`` (24 bytes)."""
        if len(nonce) != _NONCE_SIZE:
            raise LocalProtocolError(f"a nonce has {_NONCE_SIZE} bytes, got {len(nonce)}")
        return bytes(nacl.bindings.crypto_secretbox_easy(plaintext, nonce, self._raw))

    def open(self, nonce: bytes, ciphertext: bytes) -> bytes:
        """The plaintext of a sealed message; :class:`DecodeError` if it does not authenticate."""
        if len(nonce) != _NONCE_SIZE:
            raise LocalProtocolError(f"a nonce has {_NONCE_SIZE} bytes, got {len(nonce)}")
        if len(ciphertext) < MAC_SIZE:
            raise DecodeError("sealed message shorter than its MAC")
        try:
            return bytes(nacl.bindings.crypto_secretbox_open_easy(ciphertext, nonce, self._raw))
        except nacl.exceptions.CryptoError:
            raise DecodeError("sealed message failed authentication") from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return "SessionKey(<secret>)"
