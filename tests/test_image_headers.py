"""Image headers: the size checked before decoding is the size OpenCV decodes, or the frame is refused.

Hostile frames are made here from real OpenCV output: markers libjpeg skips without a length (TEM,
RSTn), fill bytes, a frame header hidden from a naive walk inside a comment, two frame headers, headers
cut short or lying about their length; PNGs whose IHDR is not first or fails its CRC. A property test
checks the walk against ``cv2.imdecode`` on random valid images and on the same images with such
markers and segments inserted.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

cv2 = pytest.importorskip("cv2")

from edge_runtime.errors import PayloadError  # noqa: E402
from edge_runtime.tasks.vision import ImageDecoder, image_size  # noqa: E402


def _jpeg(w: int, h: int, *params: int) -> bytes:
    img = (np.arange(w * h * 3, dtype=np.uint32).reshape(h, w, 3) % 251).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, list(params))
    assert ok
    return bytes(buf.tobytes())


def _png(w: int, h: int, *params: int) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((h, w, 3), 7, np.uint8), list(params))
    assert ok
    return bytes(buf.tobytes())


def _segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, length after the marker) of each header segment of a clean JPEG, up to SOS."""
    pos, out = 2, []
    while True:
        marker, length = jpeg[pos + 1], struct.unpack(">H", jpeg[pos + 2 : pos + 4])[0]
        out.append((pos, marker, length))
        if marker == 0xDA:
            return out
        pos += 2 + length


def _sof(jpeg: bytes) -> tuple[int, int]:
    """Offset and end of the frame header."""
    pos, _, length = next(s for s in _segments(jpeg) if 0xC0 <= s[1] <= 0xCF and s[1] not in (0xC4, 0xC8, 0xCC))
    return pos, pos + 2 + length


def _with_size(jpeg: bytes, w: int, h: int) -> bytes:
    start, end = _sof(jpeg)
    sof = jpeg[start:end]
    return jpeg[:start] + sof[:5] + struct.pack(">HH", h, w) + sof[9:] + jpeg[end:]


def _hidden_frame_header(real: bytes, shown: tuple[int, int], marker: int) -> bytes:
    """``real`` behind a parameterless ``marker`` that a walk reading a length after every marker takes for a
    segment: that walk lands on a frame header saying ``shown``, which libjpeg skips inside a comment."""
    fake_sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, shown[1], shown[0], 1) + b"\x01\x11\x00"
    # FF <marker> | 00 04 (libjpeg: 2 stray bytes; the naive walk: a length of 4) | FF FE = COM, whose length is
    # the naive walk's next marker, FF C0: the comment runs to byte 8 + 0xFFC0 and the fake header is inside it.
    head = b"\xff\xd8" + bytes([0xFF, marker]) + b"\x00\x04\xff\xfe" + fake_sof
    body_at = 8 + 0xFFC0
    return head + b"\x00" * (body_at - len(head)) + real[2:]


def _decoded_shape(payload: bytes) -> tuple[int, ...] | None:
    img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else img.shape


def _decoder(max_pixels: int) -> ImageDecoder:
    from edge_runtime.bundle import Manifest

    manifest = Manifest(
        name="t",
        task="image_classifier",
        sha256="0" * 64,
        inputs=[{"name": "x", "dtype": "float32", "shape": [None, 3, 32, 32]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [None, 2]}],
    )
    return ImageDecoder(manifest, max_bytes=1 << 24, max_pixels=max_pixels)


# --- the frames of issue 23 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("marker", [0x01, 0xD0, 0xD7], ids=["TEM", "RST0", "RST7"])
def test_a_frame_header_behind_a_parameterless_marker_is_the_one_libjpeg_reads(marker):
    real = _with_size(_jpeg(64, 64), 6000, 6000)  # decodes to 6000x6000 (36 Mpx, a route takes 16.7)
    payload = _hidden_frame_header(real, (64, 64), marker)
    assert image_size(payload) == ("jpeg", 6000, 6000)
    with pytest.raises(PayloadError, match="6000x6000") as err:
        _decoder(4096 * 4096).decode(payload)
    assert err.value.code == "too_large"


@pytest.mark.parametrize("marker", [0x01, 0xD3])
def test_each_frame_that_decodes_larger_than_the_limit_is_refused_before_decoding(marker):
    real = _with_size(_jpeg(40, 30), 400, 300)  # small enough to decode here: 120,000 pixels
    payload = _hidden_frame_header(real, (40, 30), marker)
    assert _decoded_shape(payload) == (300, 400, 3)  # OpenCV does decode it at its real size
    decoder = _decoder(max_pixels=40 * 30 * 4)
    with pytest.raises(PayloadError, match="400x300") as err:  # the header's size: refused before decoding
        decoder.decode(payload)
    assert err.value.code == "too_large"
    decoder.decode(_jpeg(40, 30))  # the real small one passes


def test_fill_bytes_and_parameterless_markers_between_segments_are_skipped():
    jpeg = _jpeg(53, 37)
    _, end = _sof(jpeg)
    for extra in (b"\xff\xff\xff", b"\xff\x01", b"\xff\xd5", b"\xff\xff\xd0\xff\x01", b"\xff\x00", b"junk"):
        for at in (2, end):
            payload = jpeg[:at] + extra + jpeg[at:]
            if at == 2 and not extra.startswith(b"\xff"):
                with pytest.raises(PayloadError):  # OpenCV wants FF D8 FF before it calls libjpeg
                    image_size(payload)
                assert _decoded_shape(payload) is None
                continue
            assert image_size(payload) == ("jpeg", 53, 37), extra
            assert _decoded_shape(payload) == (37, 53, 3), extra


def test_a_second_frame_header_is_refused_as_libjpeg_refuses_it():
    jpeg = _jpeg(64, 64)
    start, end = _sof(jpeg)
    second = _with_size(jpeg, 6000, 6000)[start:end]
    payload = jpeg[:end] + second + jpeg[end:]
    with pytest.raises(PayloadError, match="two frame headers"):
        image_size(payload)
    assert _decoded_shape(payload) is None


@pytest.mark.parametrize("sof", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
def test_every_start_of_frame_variant_gives_the_size(sof):
    jpeg = bytearray(_jpeg(70, 20))
    jpeg[_sof(bytes(jpeg))[0] + 1] = sof  # progressive, lossless, arithmetic, hierarchical: the same layout
    assert image_size(bytes(jpeg)) == ("jpeg", 70, 20)


def test_progressive_and_restart_intervals_from_opencv():
    progressive = _jpeg(33, 17, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    assert any(m == 0xC2 for _, m, _ in _segments(progressive))
    assert image_size(progressive) == ("jpeg", 33, 17) and _decoded_shape(progressive) == (17, 33, 3)
    restarts = _jpeg(64, 48, cv2.IMWRITE_JPEG_RST_INTERVAL, 1)
    assert image_size(restarts) == ("jpeg", 64, 48) and _decoded_shape(restarts) == (48, 64, 3)


def test_truncated_and_lying_headers_are_refused():
    jpeg = _jpeg(64, 64)
    start, end = _sof(jpeg)
    sos = _segments(jpeg)[-1][0]
    cases = {
        "cut before the frame header": jpeg[: start - 3],
        "cut inside the frame header": jpeg[: start + 6],
        "cut in the scan": jpeg[: sos + 40],
        "a segment longer than the file": jpeg[:start] + b"\xff\xe1\xff\xf0" + b"\0" * 20,
        "a segment of length 1": jpeg[:start] + b"\xff\xe1\x00\x01" + jpeg[start:],
        "a frame header too short": jpeg[:start] + b"\xff\xc0\x00\x05\x08\x00\x40" + jpeg[end:],
        "a height of 0 (DNL)": _with_size(jpeg, 64, 0),
        "end of image before the frame": jpeg[:start] + b"\xff\xd9" + jpeg[start:],
        "a second start of image": jpeg[:start] + b"\xff\xd8" + jpeg[start:],
        "scan data first": jpeg[:2] + jpeg[sos:],
    }
    for what, payload in cases.items():
        with pytest.raises(PayloadError) as err:
            image_size(payload)
        assert err.value.code == "bad_image", what


def test_png_ihdr_first_with_a_valid_crc():
    png = _png(21, 9)
    assert image_size(png) == ("png", 21, 9)
    bad_crc = bytearray(png)
    bad_crc[30] ^= 0xFF
    text = struct.pack(">I", 3) + b"tEXt" + b"a\0b" + struct.pack(">I", zlib.crc32(b"tEXta\0b"))
    ihdr_later = png[:8] + text + png[8:]
    zero = bytearray(png)
    zero[16:20] = b"\0\0\0\0"
    zero[29:33] = struct.pack(">I", zlib.crc32(bytes(zero[12:29])))
    for what, payload, words in [
        ("bad IHDR CRC", bytes(bad_crc), "CRC"),
        ("IHDR not first", ihdr_later, "IHDR"),
        ("zero width", bytes(zero), "0x9"),
        ("cut in the header", png[:30], "incomplete"),
        ("no IEND", png[:-12], "truncated"),
    ]:
        with pytest.raises(PayloadError, match=words):
            image_size(payload)
        assert _decoded_shape(payload) is None or what == "no IEND", what


# --- the walk agrees with OpenCV -----------------------------------------------------------------------------
_sizes = st.tuples(st.integers(1, 160), st.integers(1, 160))
_jpeg_params = st.lists(
    st.sampled_from(
        [
            (cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
            (cv2.IMWRITE_JPEG_OPTIMIZE, 1),
            (cv2.IMWRITE_JPEG_RST_INTERVAL, 1),
            (cv2.IMWRITE_JPEG_RST_INTERVAL, 7),
            (cv2.IMWRITE_JPEG_QUALITY, 5),
            (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444),
            (cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411),
        ]
    ),
    max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=_sizes, params=_jpeg_params, png=st.booleans(), level=st.integers(0, 9))
def test_the_walk_agrees_with_opencv_on_valid_images(size, params, png, level):
    w, h = size
    flat = [v for pair in params for v in pair]
    payload = _png(w, h, cv2.IMWRITE_PNG_COMPRESSION, level) if png else _jpeg(w, h, *flat)
    assert image_size(payload)[1:] == (w, h)
    assert _decoded_shape(payload) == (h, w, 3)


_insert = st.one_of(
    st.sampled_from([b"\xff\x01", b"\xff\xd0", b"\xff\xd7", b"\xff\xff", b"\xff\x00", b"\x00", b"\xff\xd8"]),
    st.binary(max_size=6),
    # a comment or APPn segment, possibly holding what looks like a frame header of another size
    st.builds(
        lambda marker, body: bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body,
        st.sampled_from([0xFE, 0xE0, 0xE1, 0xEF]),
        st.one_of(
            st.binary(max_size=20),
            st.tuples(st.integers(1, 65535), st.integers(1, 65535)).map(
                lambda wh: b"\xff\xc0\x00\x0b\x08" + struct.pack(">HH", wh[1], wh[0]) + b"\x01\x01\x11\x00"
            ),
        ),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=_sizes, inserts=st.lists(st.tuples(st.integers(0, 10), _insert), max_size=4), cut=st.integers(0, 40))
def test_what_the_walk_accepts_decodes_at_the_size_it_said(size, inserts, cut):
    """Markers, fill, junk and segments inserted between the header segments; when the walk gives a size,
    OpenCV decodes that size or nothing, never another one (the real frame header stays small here, so a
    wrong walk would show as a wrong size, not as a large allocation)."""
    w, h = size
    jpeg = _jpeg(w, h)
    bounds = [pos for pos, _, _ in _segments(jpeg)]
    payload = jpeg
    for index, extra in sorted(inserts, key=lambda ie: -bounds[min(ie[0], len(bounds) - 1)]):
        at = bounds[min(index, len(bounds) - 1)]
        payload = payload[:at] + extra + payload[at:]
    if cut:
        payload = payload[: len(payload) - cut]
    try:
        _, got_w, got_h = image_size(payload)
    except PayloadError:
        return
    shape = _decoded_shape(payload)
    assert shape is None or shape[:2] == (got_h, got_w)


# --- OpenCV's own limit --------------------------------------------------------------------------------------
def test_opencv_is_loaded_with_its_pixel_limit_at_the_routes_limit():
    """In a fresh interpreter: the vision task's import sets OpenCV's limit before OpenCV reads it, so even a
    header that passed our check could not make OpenCV allocate more than MAX_PIXELS."""
    code = (
        "import struct, zlib, numpy as np\n"
        "from edge_runtime.tasks.vision import cv2\n"
        "from edge_runtime._opencv import MAX_PIXELS, pixel_limit_holds\n"
        "chunk = lambda k, d: struct.pack('>I', len(d)) + k + d + struct.pack('>I', zlib.crc32(k + d))\n"
        "ihdr = chunk(b'IHDR', struct.pack('>IIBBBBB', 4097, 4096, 8, 2, 0, 0, 0))\n"
        "png = b'\\x89PNG\\r\\n\\x1a\\n' + ihdr + chunk(b'IDAT', zlib.compress(b'')) + chunk(b'IEND', b'')\n"
        "try:\n"
        "    cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)\n"
        "    print('decoded')\n"
        "except cv2.error as err:\n"
        "    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(err) else err)\n"
        "print(pixel_limit_holds(), MAX_PIXELS)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.split() == ["refused", "True", str(4096 * 4096)], out.stderr[-2000:]
