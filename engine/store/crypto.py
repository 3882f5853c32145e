"""AES-256-GCM sealing of stored message bytes (encryption at rest).

A sealed blob is self-describing, so rows written under different keys live side by
side and a key can be rotated without a flag day:

    magic (4) | format (1) | key id length (1) | key id | nonce (12) | SHA-256 of the
    plaintext (32) | ciphertext + GCM tag (16)

Everything before the ciphertext is the header. The GCM associated data is the header
plus the row context (for a message: channel, sender and control id; for a quarantined
frame: channel and reason), each part length-prefixed. So a ciphertext moved to a row
of another channel or sender, a key id edited in place, or a flipped bit all fail
authentication. The plaintext digest in the header is the same SHA-256 intake computes
for dedup (`Inbound.content_hash`, over the whole message as received): the store keeps
it in clear anyway, and `rekey` compares it with the row's own column, which also
catches a ciphertext swapped between two rows sharing channel, sender and control id.

Nonces are 96 random bits per seal (NIST SP 800-38D §8.2.2): keep well under 2**32
seals per key, i.e. rotate the active key before about four billion messages.

Errors name the key id and never any content; the key material itself is never in a
message, a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.types import ConfigError, StoreUnavailableError

MAGIC = b"\x00H7E"  # a NUL first: an HL7 message (or its BOM) never starts with it
FORMAT_VERSION = 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit GCM nonce
DIGEST_BYTES = 32  # SHA-256
TAG_BYTES = 16
MAX_KEY_ID = 32
KEY_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
KEY_ID_RULE = "key ids are 1-32 letters, digits, '_', '.' or '-', starting with a letter or digit"

_FIXED_HEADER = len(MAGIC) + 2  # magic, format, key id length


class EncryptionError(StoreUnavailableError):
    """A stored row cannot be decrypted. A StoreUnavailableError, so callers that already
    handle an unreachable store (admin API 503, CLI error line) handle this too."""


class KeyNotConfiguredError(EncryptionError):
    """The row was sealed under a key id that is not in the configured keyring."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"cannot decrypt: key {key_id!r} is not configured (add it under encryption.keys)")
        self.key_id = key_id


class SealBrokenError(EncryptionError):
    """Authentication failed: wrong key material for the id, a tampered row, or a
    ciphertext that belongs to another row."""

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        super().__init__(f"cannot decrypt: {reason}" + (f" (key {key_id!r})" if key_id else ""))
        self.key_id = key_id


@dataclass(frozen=True, slots=True)
class SealHeader:
    """The clear part of a sealed blob."""

    key_id: str
    nonce: bytes
    digest: bytes  # SHA-256 of the plaintext
    length: int  # bytes before the ciphertext


def is_sealed(blob: bytes) -> bool:
    """Does `blob` start like a sealed blob? (Rows written before encryption was on do not.)"""
    return blob[: len(MAGIC)] == MAGIC


def read_header(blob: bytes) -> SealHeader:
    """Parse the clear header; SealBrokenError when it is malformed or truncated."""
    if not is_sealed(blob) or len(blob) < _FIXED_HEADER:
        raise SealBrokenError("not a sealed row")
    if blob[len(MAGIC)] != FORMAT_VERSION:
        raise SealBrokenError(f"unknown seal format {blob[len(MAGIC)]}")
    id_length = blob[len(MAGIC) + 1]
    nonce_at = _FIXED_HEADER + id_length
    digest_at = nonce_at + NONCE_BYTES
    length = digest_at + DIGEST_BYTES
    if not 0 < id_length <= MAX_KEY_ID or len(blob) < length + TAG_BYTES:
        raise SealBrokenError("truncated or malformed seal header")
    try:
        key_id = blob[_FIXED_HEADER:nonce_at].decode("ascii")
    except UnicodeDecodeError:
        raise SealBrokenError("malformed key id") from None
    if not KEY_ID_RE.fullmatch(key_id):
        raise SealBrokenError("malformed key id")
    return SealHeader(key_id, blob[nonce_at:digest_at], blob[digest_at:length], length)


def key_id_of(blob: bytes) -> str | None:
    """The key id a blob was sealed under, or None for a plaintext (legacy) row."""
    return read_header(blob).key_id if is_sealed(blob) else None


def context_bytes(context: Iterable[str]) -> bytes:
    """Row context as associated data: each part UTF-8, prefixed with its 4-byte length
    (so ("ab", "c") and ("a", "bc") differ)."""
    out = bytearray()
    for part in context:
        data = part.encode("utf-8", "surrogatepass")
        out += struct.pack(">I", len(data))
        out += data
    return bytes(out)


def decode_key(text: str, key_id: str) -> bytes:
    """A key as configured (base64 of 32 bytes) to bytes; ConfigError names the id, never the value."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError([f"encryption.keys.{key_id}: not valid base64"]) from None
    if len(key) != KEY_BYTES:
        raise ConfigError([f"encryption.keys.{key_id}: must decode to {KEY_BYTES} bytes (AES-256), "
                           f"got {len(key)}"])
    return key


def generate_key() -> str:
    """A fresh random AES-256 key, base64, as `encryption.keys` expects it."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


class Keyring:
    """The configured keys: `active` seals new rows, every key opens rows sealed under it."""

    __slots__ = ("_active", "_ciphers")

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        for key_id, key in keys.items():
            if not KEY_ID_RE.fullmatch(key_id):
                raise ConfigError([f"encryption.keys: {KEY_ID_RULE}"])
            if len(key) != KEY_BYTES:
                raise ConfigError([f"encryption.keys.{key_id}: must be {KEY_BYTES} bytes (AES-256)"])
        if active not in keys:
            raise ConfigError([f"encryption.active: key {active!r} is not in encryption.keys"])
        # AESGCM objects hold the expanded key: built once, reused for every row.
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._active = active

    def __repr__(self) -> str:
        return f"Keyring(active={self._active!r}, keys={sorted(self._ciphers)!r})"

    @property
    def active(self) -> str:
        return self._active

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._ciphers)

    def seal(self, plaintext: bytes, context: Iterable[str]) -> bytes:
        """Encrypt under the active key, bound to `context` (the row it is stored in)."""
        key_id = self._active.encode("ascii")
        nonce = os.urandom(NONCE_BYTES)
        header = b"".join((
            MAGIC, bytes((FORMAT_VERSION, len(key_id))), key_id, nonce, hashlib.sha256(plaintext).digest(),
        ))
        return header + self._ciphers[self._active].encrypt(nonce, plaintext, header + context_bytes(context))

    def open(self, blob: bytes, context: Iterable[str]) -> bytes:
        """Decrypt a blob sealed for `context`.

        KeyNotConfiguredError when its key id is unknown; SealBrokenError when the
        blob was altered, sealed for another row, or the key material differs.
        """
        header = read_header(blob)
        cipher = self._ciphers.get(header.key_id)
        if cipher is None:
            raise KeyNotConfiguredError(header.key_id)
        associated = blob[: header.length] + context_bytes(context)
        try:
            plaintext = cipher.decrypt(header.nonce, blob[header.length :], associated)
        except InvalidTag:
            raise SealBrokenError("authentication failed: wrong key, altered row, or a row moved "
                                  "from elsewhere", header.key_id) from None
        if hashlib.sha256(plaintext).digest() != header.digest:
            raise SealBrokenError("plaintext digest mismatch", header.key_id)
        return plaintext

    def open_or_plain(self, blob: bytes, context: Iterable[str]) -> bytes:
        """`open` for sealed blobs; a row written before encryption was enabled is returned as is."""
        return self.open(blob, context) if is_sealed(blob) else blob
