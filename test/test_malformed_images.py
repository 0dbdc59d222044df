"""Malformed sensor_msgs/Image fields (issue 15, point 1): property-based tests of the decoding layer.

Two properties cover what a field (or a broken driver) can send:
- any well-formed message, with any row padding and either byte order, decodes to exactly the pixels
  that were encoded, as an aligned array that torch and OpenCV accept;
- any message at all (random height/width/step/data length/encoding/is_bigendian, including sizes that
  claim gigabytes and unsigned fields that wrapped around) either decodes consistently with its fields or
  raises ImageDecodeError, never anything else, and never allocates more than the bytes it was given.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nmr.data.encodings import SUPPORTED_ENCODINGS, image_to_numpy, layout
from nmr.errors import ImageDecodeError

# Small examples, bounded count: the whole file runs in a few seconds on a loaded 2-core CI machine.
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UINT32_MAX = 2**32 - 1
ENCODINGS = sorted(SUPPORTED_ENCODINGS)


class Msg:
    """A duck-typed Image: the decoder sees rclpy and rosbags messages through these fields only."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


def _pixels(encoding: str, h: int, w: int, seed: int) -> np.ndarray:
    dtype, channels = layout(encoding)
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    if dtype.kind == 'f':
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True, dtype=dtype)


def _message(arr: np.ndarray, encoding: str, pad: int, big: bool, data_kind: str) -> Msg:
    """Fields built independently of the decoder: rows in the requested byte order, `pad` junk bytes."""
    h, w = arr.shape[:2]
    stored = arr.astype(arr.dtype.newbyteorder('>' if big else '<'))
    rows = stored.reshape(h, -1).view(np.uint8).reshape(h, -1)
    data = np.concatenate([rows, np.full((h, pad), 0xA5, np.uint8)], axis=1).reshape(-1)
    payload: object = data if data_kind == 'numpy' else data.tobytes()
    return Msg(height=h, width=w, encoding=encoding, is_bigendian=int(big), step=rows.shape[1] + pad,
               data=payload)


@FAST
@given(encoding=st.sampled_from(ENCODINGS), h=st.integers(1, 9), w=st.integers(1, 9), pad=st.integers(0, 9),
       big=st.booleans(), data_kind=st.sampled_from(['numpy', 'bytes']), seed=st.integers(0, 2**16))
def test_any_padding_and_byte_order_decodes_to_the_encoded_pixels(encoding, h, w, pad, big, data_kind, seed):
    arr = _pixels(encoding, h, w, seed)
    out = image_to_numpy(_message(arr, encoding, pad, big, data_kind))
    assert out.dtype == arr.dtype and out.dtype.isnative and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    # torch.from_numpy refuses strides that are not multiples of the item size; OpenCV wants alignment
    assert out.flags.aligned and all(s % out.itemsize == 0 for s in out.strides)


def _sizes() -> st.SearchStrategy[int]:
    """Plausible, zero, negative-looking (wrapped unsigned) and gigabyte-claiming values."""
    return st.one_of(st.integers(0, 12), st.integers(-5, -1), st.sampled_from([UINT32_MAX, 2**31, 10**6]),
                     st.integers(0, UINT32_MAX))


def _encodings() -> st.SearchStrategy[str]:
    odd = [e.upper() for e in ENCODINGS] + [f' {e}' for e in ENCODINGS] + [f'{e}\n' for e in ENCODINGS]
    return st.one_of(st.sampled_from(ENCODINGS + odd + ['', 'nv12', 'yuv422', '8UC3']), st.text(max_size=12))


@FAST
@given(encoding=_encodings(), height=_sizes(), width=_sizes(), step=_sizes(), n_bytes=st.integers(0, 600),
       is_bigendian=st.sampled_from([0, 1, 2, 255]))
def test_arbitrary_fields_decode_consistently_or_raise_image_decode_error(encoding, height, width, step,
                                                                           n_bytes, is_bigendian):
    msg = Msg(height=height, width=width, encoding=encoding, is_bigendian=is_bigendian, step=step,
              data=np.arange(n_bytes, dtype=np.uint64).astype(np.uint8))
    try:
        out = image_to_numpy(msg, '/cam/image_raw')
    except ImageDecodeError as err:
        text = str(err)
        assert '\n' not in text and '/cam/image_raw' in text
        return
    dtype, channels = layout(encoding)
    assert out.shape[:2] == (height, width) and (channels == 1 or out.shape[2] == channels)
    assert height * step == n_bytes and step >= width * channels * dtype.itemsize
    assert out.dtype == dtype


@pytest.mark.parametrize('height, width, step', [
    (100_000, 100_000, 300_000),              # 30 GB claimed, 1 kB sent
    (UINT32_MAX, UINT32_MAX, UINT32_MAX),     # every field wrapped around from -1
    (1, UINT32_MAX, 3),                       # step far shorter than the claimed row
    (2**31, 1, 6),                            # rows claimed: 2^31
])
@pytest.mark.parametrize('encoding', ['rgb8', 'mono16', '32FC1'])
def test_gigabyte_claims_are_refused_before_any_allocation(height, width, step, encoding):
    msg = Msg(height=height, width=width, encoding=encoding, is_bigendian=1, step=step,
              data=np.zeros(1024, np.uint8))
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError):
            image_to_numpy(msg, '/lwir')
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f'decoding a refused message allocated {peak} bytes'


@pytest.mark.parametrize('encoding, wanted', [('MONO16', 'mono16'), (' rgb8', 'rgb8'), ('16uc1\n', '16UC1'),
                                              ('Bgr8', 'bgr8')])
def test_odd_case_or_whitespace_is_refused_with_a_did_you_mean(encoding, wanted):
    arr = _pixels(wanted, 2, 3, 0)
    msg = _message(arr, wanted, 0, False, 'numpy')
    msg.encoding = encoding
    with pytest.raises(ImageDecodeError, match=f"did you mean '{wanted}'") as info:
        image_to_numpy(msg, '/flir_boson/image_raw')
    assert '/flir_boson/image_raw' in str(info.value) and '\n' not in str(info.value)


@pytest.mark.parametrize('delta, words', [(-1, 'truncated'), (+1, 'extra bytes'),
                                          (+4096, 'extra bytes')])
def test_data_shorter_or_longer_than_step_times_height_is_refused(delta, words):
    arr = _pixels('mono16', 4, 5, 1)
    msg = _message(arr, 'mono16', 2, False, 'numpy')
    data = np.asarray(msg.data)
    msg.data = data[:delta] if delta < 0 else np.concatenate([data, np.zeros(delta, np.uint8)])
    with pytest.raises(ImageDecodeError, match=words):
        image_to_numpy(msg)


def test_step_not_a_multiple_of_the_item_size_still_gives_torch_a_usable_array():
    torch = pytest.importorskip('torch')
    arr = _pixels('16UC1', 6, 5, 2)
    out = image_to_numpy(_message(arr, '16UC1', 3, True, 'bytes'))   # step 13: odd, big-endian
    np.testing.assert_array_equal(torch.from_numpy(out.astype(np.int32)).numpy(), arr)
    out = image_to_numpy(_message(arr, '16UC1', 1, False, 'numpy'))  # step 11: odd, native
    assert torch.from_numpy(out).shape == (6, 5)


def test_data_that_is_not_bytes_is_refused():
    msg = Msg(height=1, width=2, encoding='mono8', is_bigendian=0, step=2, data=[1, 300])
    with pytest.raises(ImageDecodeError, match='not a byte sequence'):
        image_to_numpy(msg)
