"""The ``.lic`` file: a small, checked container around a model's entropy-coded strings.

Layout (big-endian; ``u8``/``u16``/``u32`` unsigned integers)::

    magic      4 bytes  b"LIC\\x1a"
    version    u8       FORMAT_VERSION
    model      u8 length, then that many ASCII bytes   e.g. "factorized"
    config     8 bytes  first 8 bytes of sha256 of the model's configuration (for
                        lictutor.evaluate: of everything its decoder uses, weights included)
    image      u16 height, u16 width                   of the original image, before padding
    shape      u8 count, then u16 each                 latent shape the decoder needs
    strings    u8 groups; per group u16 count; per string u32 length, then the bytes
    sections   (version 2 only) u8 count; per section a 4-byte ASCII tag, u32 length, the bytes
    crc        u32      CRC-32 of everything above

A file without sections is written as version 1, byte for byte what it always was; sections
(e.g. a decoder's weights sent with its latents, chapter 6) make it version 2. Both versions
are read.

Decoding checks the magic, the version, the CRC, every length against what is left, and the
model and configuration against the decoder's, and raises :class:`LictutorError` naming the
problem. A damaged file therefore never reaches the entropy decoder, so it cannot hang it or
produce a garbage image.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass, field

from lictutor.errors import LictutorError

__all__ = [
    "MAGIC", "FORMAT_VERSION", "MAX_SIDE", "Payload", "config_hash", "pack", "unpack", "overhead",
]

MAGIC = b"LIC\x1a"
FORMAT_VERSION = 2  #: the newest version; a file without sections is written as version 1
MAX_SIDE = 65535  #: largest image height or width a file can record (u16)


@dataclass
class Payload:
    """What a ``.lic`` file holds."""

    model: str
    config: bytes  #: 8-byte configuration hash, see :func:`config_hash`
    image_size: tuple[int, int]  #: (height, width) of the original image
    shape: tuple[int, ...]  #: latent shape passed to the model's ``decompress``
    strings: list[list[bytes]]  #: CompressAI's layout: one list per latent, one string per image
    #: further data by a 4-character ASCII tag, e.g. ``{"WGTS": coded weights}``; in file order
    sections: dict[str, bytes] = field(default_factory=dict)


def config_hash(config: dict) -> bytes:
    """8 bytes that change whenever the model's configuration does."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).digest()[:8]


def pack(payload: Payload) -> bytes:
    """Serialize ``payload`` to the bytes of a ``.lic`` file."""
    model = payload.model.encode("ascii")
    h, w = payload.image_size
    _check(len(model) < 256, "model name too long")
    _check(len(payload.config) == 8, "config hash must be 8 bytes")
    _check(0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE, f"image size {h}x{w} out of range")
    _check(len(payload.shape) < 256 and all(0 <= d < 65536 for d in payload.shape), "bad shape")
    _check(len(payload.strings) < 256, "too many string groups")
    _check(len(payload.sections) < 256, "too many sections")
    for tag, data in payload.sections.items():
        _check(isinstance(tag, str) and len(tag) == 4 and tag.isascii() and tag.isprintable(),
               f"section tag {tag!r} is not 4 printable ASCII characters")
        _check(isinstance(data, (bytes, bytearray)) and len(data) < 2**32, f"section {tag!r} is not bytes")
    out = bytearray(MAGIC)
    out += struct.pack(">BB", 2 if payload.sections else 1, len(model)) + model + payload.config
    out += struct.pack(">HHB", h, w, len(payload.shape))
    out += struct.pack(f">{len(payload.shape)}H", *payload.shape)
    out += struct.pack(">B", len(payload.strings))
    for group in payload.strings:
        _check(len(group) < 65536, "too many strings in a group")
        out += struct.pack(">H", len(group))
        for s in group:
            out += struct.pack(">I", len(s)) + s
    if payload.sections:
        out += struct.pack(">B", len(payload.sections))
        for tag, data in payload.sections.items():
            out += tag.encode("ascii") + struct.pack(">I", len(data)) + bytes(data)
    out += struct.pack(">I", zlib.crc32(out))
    return bytes(out)


def overhead(payload: Payload) -> int:
    """Bytes of a packed file that are container, not data (the strings and the sections)."""
    data = sum(len(s) for group in payload.strings for s in group) + sum(map(len, payload.sections.values()))
    return len(pack(payload)) - data


def unpack(data: bytes, model: str | None = None, config: bytes | None = None) -> Payload:
    """Parse and check a ``.lic`` file; ``model``/``config`` are what the decoder expects."""
    if len(data) < len(MAGIC) + 5 or data[: len(MAGIC)] != MAGIC:
        raise LictutorError("not a .lic file (wrong magic bytes)")
    version = data[len(MAGIC)]
    if version not in (1, FORMAT_VERSION):
        raise LictutorError(f".lic format version {version} is not supported (this reads 1 and {FORMAT_VERSION})")
    body, (crc,) = data[:-4], struct.unpack(">I", data[-4:])
    if zlib.crc32(body) != crc:
        raise LictutorError("corrupted .lic file (CRC mismatch)")
    r = _Reader(body, len(MAGIC) + 1)
    name = r.take(r.u("B")).decode("ascii", errors="replace")
    cfg = r.take(8)
    h, w = r.u("H"), r.u("H")
    shape = tuple(r.u("H") for _ in range(r.u("B")))
    strings = [[r.take(r.u("I")) for _ in range(r.u("H"))] for _ in range(r.u("B"))]
    sections = {}
    for _ in range(r.u("B") if version == 2 else 0):
        tag = r.take(4).decode("ascii", errors="replace")
        if tag in sections:
            raise LictutorError(f"corrupted .lic file (section {tag!r} twice)")
        sections[tag] = r.take(r.u("I"))
    if r.pos != len(body):
        raise LictutorError("corrupted .lic file (trailing bytes)")
    if model is not None and name != model:
        raise LictutorError(f"this file was written by model {name!r}, not {model!r}")
    if config is not None and cfg != config:
        raise LictutorError(
            f"this file was written by a {name!r} model with another configuration or other weights"
        )
    if h == 0 or w == 0:
        raise LictutorError("corrupted .lic file (empty image)")
    return Payload(name, cfg, (h, w), shape, strings, sections)


class _Reader:
    """Bounds-checked reads: running past the end is a truncated file, not an IndexError."""

    def __init__(self, data: bytes, pos: int):
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise LictutorError("truncated .lic file")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u(self, fmt: str) -> int:
        return struct.unpack(">" + fmt, self.take(struct.calcsize(fmt)))[0]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise LictutorError(f"cannot write .lic file: {message}")
