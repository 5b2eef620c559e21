"""A JPEG's or PNG's dimensions from its header, read the way the decoder will read them.

The size checked before decoding must be the size OpenCV will allocate, or a hostile frame passes the
check as 64x64 and decodes to 6000x6000. So the walk follows libjpeg (which OpenCV decodes JPEG with)
marker by marker rather than guessing: parameterless markers (TEM, RST0-7) have no length, fill bytes
(FF FF ...) and anything between segments that is not a marker are skipped as libjpeg skips them, a
second SOI or SOF, an EOI or a scan before the frame header are refused (libjpeg refuses them too), and
every other marker carries a length it is skipped by. The first SOF (baseline, extended, progressive,
lossless, arithmetic or hierarchical) gives the size; libjpeg reads no dimension from anywhere else.
A PNG's size is its IHDR, which must be the first chunk, 13 bytes long, with a valid CRC (libpng's rules).

OpenCV's own limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, set by ``edge_runtime._opencv``) stays as the second line.
An EXIF orientation may swap width and height in the decoded image; the pixel count is the same.
"""

from __future__ import annotations

import struct
import zlib

from ..errors import PayloadError

__all__ = ["image_size", "JPEG_MAGIC", "PNG_MAGIC"]

JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8", b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"
# Start-of-frame markers, which carry the frame's dimensions (not DHT C4, JPG C8, DAC CC).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length: TEM and the restart markers.
_PARAMETERLESS = frozenset({0x01, *range(0xD0, 0xD8)})
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA


def image_size(payload: bytes) -> tuple[str, int, int]:
    """(format, width, height) from a JPEG or PNG header, without decoding; PayloadError if unreadable."""
    if payload.startswith(PNG_MAGIC):
        return ("png", *_png_size(payload))
    if payload.startswith(JPEG_MAGIC):
        return ("jpeg", *_jpeg_size(payload))
    raise PayloadError("not_image", "payload is not a JPEG, PNG or .npy image")


def _png_size(payload: bytes) -> tuple[int, int]:
    if len(payload) < 33:
        raise PayloadError("bad_image", "PNG header is incomplete")
    length, kind = struct.unpack(">I4s", payload[8:16])
    if kind != b"IHDR" or length != 13:
        raise PayloadError("bad_image", "PNG is corrupt (its first chunk is not a 13-byte IHDR)")
    if zlib.crc32(payload[12:29]) != struct.unpack(">I", payload[29:33])[0]:
        raise PayloadError("bad_image", "PNG is corrupt (its IHDR's CRC does not match)")
    w, h = struct.unpack(">II", payload[16:24])
    if not (0 < w < 2**31 and 0 < h < 2**31):
        raise PayloadError("bad_image", f"PNG header says {w}x{h} pixels")
    if not payload.rstrip(b"\0").endswith(_PNG_END):
        raise PayloadError("bad_image", "PNG is truncated (no IEND chunk)")
    return w, h


def _jpeg_size(payload: bytes) -> tuple[int, int]:
    n = len(payload)
    # OpenCV hands a payload to libjpeg only when it starts FF D8 FF.
    if n < 3 or payload[2] != 0xFF:
        raise PayloadError("bad_image", "JPEG is corrupt (no marker after the start-of-image)")
    pos, size = 2, None
    while True:
        marker, pos = _next_marker(payload, pos)
        if marker in _PARAMETERLESS:
            continue
        if marker == _SOI:
            raise PayloadError("bad_image", "JPEG is corrupt (a second start-of-image marker)")
        if marker == _EOI:
            raise PayloadError("bad_image", "JPEG ends before its frame header")
        if marker == _SOS:
            break
        if pos + 2 > n:
            raise PayloadError("bad_image", "JPEG is truncated (in its header)")
        length = struct.unpack(">H", payload[pos : pos + 2])[0]
        if length < 2:
            raise PayloadError("bad_image", f"JPEG is corrupt (a segment of length {length} at byte {pos})")
        if pos + length > n:
            raise PayloadError("bad_image", "JPEG is truncated (in its header)")
        if marker in _SOF:
            if size is not None:
                raise PayloadError("bad_image", "JPEG is corrupt (two frame headers)")
            if length < 8:
                raise PayloadError("bad_image", "JPEG is corrupt (a frame header too short for its dimensions)")
            h, w = struct.unpack(">HH", payload[pos + 3 : pos + 7])
            size = (w, h)
        pos += length
    if size is None:
        raise PayloadError("bad_image", "JPEG is corrupt (image data before the frame header)")
    w, h = size
    if w == 0 or h == 0:  # a height of 0 defers it to a DNL marker, which libjpeg does not read
        raise PayloadError("bad_image", f"JPEG header says {w}x{h} pixels")
    if not payload.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise PayloadError("bad_image", "JPEG is truncated (no end-of-image marker)")
    return w, h


def _next_marker(payload: bytes, pos: int) -> tuple[int, int]:
    """The next marker's code and the position after it, found as libjpeg's ``next_marker`` finds it:
    bytes other than FF skipped, FF fill bytes swallowed, an FF 00 pair discarded."""
    n = len(payload)
    while True:
        found = payload.find(b"\xff", pos)
        if found < 0:
            raise PayloadError("bad_image", "JPEG is truncated (no frame header)")
        pos = found + 1
        while pos < n and payload[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise PayloadError("bad_image", "JPEG is truncated (no frame header)")
        if payload[pos] != 0:
            return payload[pos], pos + 1
        pos += 1
