import io

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.errors import PayloadError
from edge_runtime.tasks.codecs import RowDecoder

DEC = RowDecoder(shape=(4,), dtype="float32", allow_non_finite=False, max_bytes=10_000)


def test_json_object_list_and_batch_of_one():
    assert DEC.decode(b'{"id": 1, "values": [1, 2, 3, 4]}')[0] == 1
    assert DEC.decode(b"[1, 2, 3, 4]")[1].tolist() == [1, 2, 3, 4]
    assert DEC.decode(b'{"values": [[1, 2, 3, 4]]}')[1].shape == (4,)


def test_npy_is_loaded_without_pickle():
    buf = io.BytesIO()
    np.save(buf, np.array([1, 2, 3, 4], dtype=np.float64))
    assert DEC.decode(buf.getvalue())[1].dtype == np.float32
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PayloadError) as info:
        DEC.decode(buf.getvalue())
    assert info.value.code == "bad_npy"


def test_dynamic_dimensions():
    dec = RowDecoder(shape=(None, 3), dtype="float32", allow_non_finite=True, max_bytes=1000)
    assert dec.decode(b"[[1,2,3],[4,5,6]]")[1].shape == (2, 3)
    assert dec.decode(b"[[NaN_is_not_json]]".replace(b"NaN_is_not_json", b"1,2,3"))[1].shape == (1, 3)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_payload_error(data):
    try:
        _, row = DEC.decode(data)
    except PayloadError as err:
        assert err.code and err.detail
    else:
        assert row.shape == (4,) and np.isfinite(row).all()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"id": json_values, "values": json_values})))
def test_any_json_decodes_or_raises_payload_error(doc):
    try:
        data = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        return
    try:
        DEC.decode(data)
    except PayloadError as err:
        assert err.code in {"bad_json", "no_values", "bad_values", "bad_shape", "not_finite", "too_large"}


# -- image frames: whatever the bytes, a PayloadError or a model-ready row ---------------------------


@pytest.fixture(scope="module")
def image_decoder():
    pytest.importorskip("cv2")
    from edge_runtime.bundle import load_bundle
    from edge_runtime.tasks.vision import ImageDecoder

    bundle = load_bundle(
        __import__("pathlib").Path(__file__).resolve().parent.parent
        / "edge_runtime"
        / "demo_models"
        / "shapes-detector"
    )
    return ImageDecoder(bundle.manifest, max_bytes=100_000)


_JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
_PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"", _JPEG_HEAD, _PNG_HEAD, b"\x93NUMPY"]), st.binary(max_size=400))
def test_any_frame_bytes_decode_or_raise_payload_error(image_decoder, head, tail):
    try:
        _, row, meta = image_decoder.decode(head + tail)
    except PayloadError as err:
        assert err.code in {"empty", "not_image", "bad_image", "bad_npy", "too_large"}
    else:
        assert row.shape == (3, 96, 96) and meta.width >= 8
