"""Output files: names, content types and bytes derived from the prediction id, so nothing is stored."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterator

from replicate_relay.simulator.requests import CONTENT_TYPES

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_SIDE = 8
# An ancillary, private, safe-to-copy chunk type: decoders skip it, so padding keeps the PNG valid.
_PNG_PADDING_CHUNK = b"sdPg"
WEIGHTS_NAME = "weights.tar"  # a training's output file
_CHUNK_BYTES = 1024 * 1024


def file_name(index: int, extension: str) -> str:
    return f"{index}-output.{extension}"


def content_type(name: str) -> str:
    if name == WEIGHTS_NAME:
        return "application/x-tar"
    return CONTENT_TYPES.get(name.rpartition(".")[2], "application/octet-stream")


def weights_chunks(training_id: str, size: int) -> Iterator[bytes]:
    """A training's weights: `size` bytes of noise (not a real tar), the same on every request, made a
    megabyte at a time so that gigabytes can be served without holding them."""
    for index, start in enumerate(range(0, size, _CHUNK_BYTES)):
        seed = f"{training_id}/{WEIGHTS_NAME}/{index}".encode()
        yield hashlib.shake_256(seed).digest(min(_CHUNK_BYTES, size - start))


def file_bytes(prediction_id: str, name: str, size: int) -> bytes:
    """The file's content: `size` bytes (at least a minimal valid PNG for .png), the same on every request.

    A .png is a real 8×8 image; .jpg and .webp only start with their format's magic bytes.
    """
    noise = hashlib.shake_256(f"{prediction_id}/{name}".encode()).digest(max(size, _PNG_SIDE * _PNG_SIDE * 3))
    extension = name.rpartition(".")[2]
    if extension == "png":
        return _png(noise, size)
    if extension == "webp":
        header = b"RIFF" + struct.pack("<I", max(size - 8, 4)) + b"WEBPVP8 "
    elif extension == "jpg":
        header = b"\xff\xd8\xff\xe0"
    else:
        header = b""
    return (header + noise)[:size]


def _png(noise: bytes, size: int) -> bytes:
    rows = b"".join(
        b"\x00" + noise[row * _PNG_SIDE * 3 : (row + 1) * _PNG_SIDE * 3] for row in range(_PNG_SIDE)
    )  # filter type 0 before each row of RGB pixels
    header = struct.pack(">IIBBBBB", _PNG_SIDE, _PNG_SIDE, 8, 2, 0, 0, 0)
    head = _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
    end = _chunk(b"IEND", b"")
    padding = size - len(head) - len(end) - 12
    if padding >= 0:
        head += _chunk(_PNG_PADDING_CHUNK, noise[:padding].ljust(padding, b"\x00"))
    return head + end


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
