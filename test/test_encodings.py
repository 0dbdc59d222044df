"""Image message <-> numpy: every encoding, step padding, big-endian, rosbags CDR and rclpy round trips."""

from __future__ import annotations

import array

import numpy as np
import pytest

from nmr.data.encodings import (
    SUPPORTED_ENCODINGS,
    image_to_numpy,
    numpy_to_image_fields,
    stamp_ns,
    to_rgb,
)
from nmr.errors import ImageDecodeError

SHAPES = {
    'rgb8': (np.uint8, 3),
    'bgr8': (np.uint8, 3),
    'rgba8': (np.uint8, 4),
    'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1),
    'mono16': (np.uint16, 1),
    '16UC1': (np.uint16, 1),
    '32FC1': (np.float32, 1),
    '32FC2': (np.float32, 2),
}


def sample(encoding: str, h: int = 5, w: int = 7) -> np.ndarray:
    dtype, c = SHAPES[encoding]
    rng = np.random.default_rng(sum(map(ord, encoding)))
    shape = (h, w) if c == 1 else (h, w, c)
    if dtype == np.float32:
        a = rng.normal(size=shape).astype(np.float32)
        a.flat[0] = np.nan
        return a
    return rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)


class Msg:
    """A duck-typed Image with bytes data (what a hand-made message looks like)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def padded_bigendian(arr: np.ndarray, encoding: str, pad: int, big: bool) -> dict:
    """Fields with ``pad`` junk bytes per row and the requested byte order, built independently."""
    a = arr.astype(arr.dtype.newbyteorder('>' if big else '<'))
    h = a.shape[0]
    rows = a.reshape(h, -1).view(np.uint8).reshape(h, -1)
    junk = np.full((h, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return {
        'height': h,
        'width': a.shape[1],
        'encoding': encoding,
        'is_bigendian': int(big),
        'step': data.shape[1],
        'data': data.reshape(-1),
    }


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def test_supported_set():
    assert set(SHAPES) == SUPPORTED_ENCODINGS


@pytest.mark.parametrize('encoding', sorted(SHAPES))
@pytest.mark.parametrize('data_type', ['numpy', 'array', 'bytes'])
def test_round_trip_plain(encoding, data_type):
    arr = sample(encoding)
    fields = numpy_to_image_fields(arr, encoding, data_type=data_type)
    assert fields['step'] == arr.shape[1] * arr.itemsize * (arr.shape[2] if arr.ndim == 3 else 1)
    assert_same(image_to_numpy(Msg(**fields)), arr)


@pytest.mark.parametrize('encoding', sorted(SHAPES))
@pytest.mark.parametrize('big', [False, True])
@pytest.mark.parametrize('data_type', ['numpy', 'array', 'bytes'])
def test_step_padding_and_byte_order(encoding, big, data_type):
    arr = sample(encoding)
    fields = padded_bigendian(arr, encoding, pad=6, big=big)
    flat = fields['data']
    fields['data'] = {'numpy': flat, 'array': array.array('B', flat.tobytes()), 'bytes': flat.tobytes()}[
        data_type
    ]
    out = image_to_numpy(Msg(**fields), topic='/t')
    assert out.dtype.isnative
    assert_same(out, arr)


def test_big_endian_value_is_read_big_endian():
    msg = Msg(height=1, width=1, encoding='mono16', is_bigendian=1, step=2, data=b'\x01\x02')
    assert image_to_numpy(msg)[0, 0] == 0x0102
    msg.is_bigendian = 0
    assert image_to_numpy(msg)[0, 0] == 0x0201


def test_decode_is_a_view_without_padding_and_native_order():
    arr = sample('16UC1')
    fields = numpy_to_image_fields(arr, '16UC1')
    out = image_to_numpy(Msg(**fields))
    assert np.shares_memory(out, fields['data'])


@pytest.mark.parametrize('encoding', sorted(SHAPES))
@pytest.mark.parametrize('big', [False, True])
def test_rosbags_cdr_round_trip(encoding, big):
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_KILTED)
    Image = ts.types['sensor_msgs/msg/Image']
    Header = ts.types['std_msgs/msg/Header']
    Time = ts.types['builtin_interfaces/msg/Time']
    arr = sample(encoding)
    for fields in (numpy_to_image_fields(arr, encoding), padded_bigendian(arr, encoding, 4, big)):
        msg = Image(header=Header(stamp=Time(sec=3, nanosec=7), frame_id='cam'), **fields)
        back = ts.deserialize_cdr(ts.serialize_cdr(msg, Image.__msgtype__), Image.__msgtype__)
        for key in ('height', 'width', 'encoding', 'is_bigendian', 'step'):
            assert getattr(back, key) == fields[key]
        np.testing.assert_array_equal(back.data, np.asarray(fields['data']))
        assert stamp_ns(back.header) == 3_000_000_007
        assert_same(image_to_numpy(back, '/cam'), arr)


@pytest.mark.parametrize('encoding', sorted(SHAPES))
def test_rclpy_serialization_round_trip(encoding):
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    arr = sample(encoding)
    for fields in (
        numpy_to_image_fields(arr, encoding, data_type='array'),
        padded_bigendian(arr, encoding, 2, True),
    ):
        if isinstance(fields['data'], np.ndarray):
            fields = {**fields, 'data': array.array('B', fields['data'].tobytes())}
        msg = Image(**fields)
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1, 2
        back = deserialize_message(serialize_message(msg), Image)
        for key in ('height', 'width', 'encoding', 'is_bigendian', 'step'):
            assert getattr(back, key) == fields[key]
        assert bytes(back.data) == bytes(fields['data'])
        assert stamp_ns(back.header) == 1_000_000_002
        assert_same(image_to_numpy(back), arr)


def test_rclpy_to_rosbags_interop():
    """Bytes serialised by rclpy deserialise in rosbags to the same image (fields, not bytes)."""
    from rclpy.serialization import serialize_message
    from rosbags.typesys import Stores, get_typestore
    from sensor_msgs.msg import Image

    arr = sample('mono16')
    msg = Image(**numpy_to_image_fields(arr, 'mono16', data_type='array'))
    ts = get_typestore(Stores.ROS2_KILTED)
    back = ts.deserialize_cdr(serialize_message(msg), 'sensor_msgs/msg/Image')
    assert_same(image_to_numpy(back), arr)


def good(**over):
    fields = numpy_to_image_fields(sample('mono16'), 'mono16', data_type='bytes')
    fields.update(over)
    return Msg(**fields)


@pytest.mark.parametrize(
    ('msg', 'words'),
    [
        (good(encoding='yuv422'), ['yuv422', 'unsupported', '/cam']),
        (good(encoding='bayer_rggb8'), ['bayer_rggb8']),
        (good(step=7), ['mono16', 'step', '/cam']),
        (good(data=b'\x00' * 10), ['mono16', 'data has 10 bytes', '/cam']),
        (good(step=20), ['mono16', 'step*height']),
        (good(height=0, data=b''), ['mono16', 'empty', '/cam']),
        (good(width=0), ['mono16', 'empty']),
    ],
)
def test_bad_messages_raise_with_encoding_and_topic(msg, words):
    with pytest.raises(ImageDecodeError) as info:
        image_to_numpy(msg, topic='/cam')
    for word in words:
        assert word in str(info.value)


def test_encode_rejects_mismatch():
    with pytest.raises(ImageDecodeError, match='rgb8'):
        numpy_to_image_fields(np.zeros((2, 2), np.uint8), 'rgb8')
    with pytest.raises(ImageDecodeError, match='16UC1'):
        numpy_to_image_fields(np.zeros((2, 2), np.float32), '16UC1')
    with pytest.raises(ImageDecodeError, match='nv12'):
        numpy_to_image_fields(np.zeros((2, 2), np.uint8), 'nv12')
    fields = numpy_to_image_fields(np.zeros((2, 3, 1), np.uint8), 'mono8')
    assert (fields['height'], fields['width'], fields['step']) == (2, 3, 3)


def test_encode_converts_foreign_byte_order():
    arr = np.arange(6, dtype='>u2').reshape(2, 3)
    fields = numpy_to_image_fields(arr, 'mono16')
    assert fields['is_bigendian'] == 0
    assert_same(image_to_numpy(Msg(**fields)), arr.astype(np.uint16))


def test_to_rgb():
    rgb = sample('rgb8')
    assert_same(to_rgb(rgb, 'rgb8'), rgb)
    assert_same(to_rgb(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8'), rgb)
    rgba = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 9, np.uint8)], axis=2)
    assert_same(to_rgb(rgba, 'rgba8'), rgb)
    bgra = np.concatenate([rgb[..., ::-1], rgba[..., 3:]], axis=2)
    assert_same(to_rgb(bgra, 'bgra8'), rgb)
    grey = sample('mono8')
    assert_same(to_rgb(grey, 'mono8'), np.repeat(grey[..., None], 3, axis=2))
    with pytest.raises(ImageDecodeError, match='16UC1'):
        to_rgb(sample('16UC1'), '16UC1')
    with pytest.raises(ImageDecodeError, match='rgb8'):
        to_rgb(grey, 'rgb8')


def test_stamp_ns_accepts_header_or_time():
    class T:
        sec, nanosec = 2, 5

    class H:
        stamp = T()

    assert stamp_ns(H()) == stamp_ns(T()) == 2_000_000_005


# -- CompressedImage (image_transport `compressed` / `compressedDepth`) ------------------------------------
class _Compressed:
    def __init__(self, fmt: str, data: bytes) -> None:
        self.format, self.data = fmt, np.frombuffer(data, np.uint8)


@pytest.mark.parametrize(('encoding', 'transport', 'want'), [
    ('mono16', 'compressed', 'mono16'), ('16UC1', 'compressedDepth', '16UC1'), ('mono8', 'compressed', 'mono8'),
    ('32FC1', 'compressedDepth', '32FC1'), ('rgb8', 'compressed', 'bgr8'),
])
def test_compressed_round_trip(encoding: str, transport: str, want: str) -> None:
    from nmr.data.compressed import decode_compressed, encode_compressed

    rng = np.random.default_rng(0)
    arrays = {'mono16': rng.integers(0, 65535, (12, 16)).astype(np.uint16),
              '16UC1': rng.integers(0, 9000, (12, 16)).astype(np.uint16),
              'mono8': np.full((12, 16), 77, np.uint8), '32FC1': np.full((12, 16), 2.0, np.float32),
              'rgb8': np.full((12, 16, 3), (200, 100, 50), np.uint8)}
    arr = arrays[encoding]
    out, got = decode_compressed(_Compressed(*encode_compressed(arr, encoding, transport)), '/t')
    assert got == want and out.shape[:2] == arr.shape[:2]
    if encoding in ('mono16', '16UC1'):
        assert np.array_equal(out, arr)  # PNG is lossless
    elif encoding == 'rgb8':
        assert np.abs(out[..., ::-1].astype(int) - arr).max() <= 3  # JPEG, decoded as BGR
    else:
        np.testing.assert_allclose(out, arr, rtol=0.02)


@pytest.mark.parametrize(('fmt', 'data', 'words'), [
    ('rgb8; jpeg compressed bgr8', b'', 'empty CompressedImage on topic /cam'),
    ('rgb8; jpeg compressed bgr8', b'garbage', 'not a decodable JPEG/PNG'),
    ('16UC1; compressedDepth png', b'\0' * 8, '12-byte header'),
    ('16UC1; compressedDepth rvl', b'\0' * 40, 'rvl'),
    ('8UC3; compressedDepth png', b'\0' * 40, 'expected 16UC1 or 32FC1'),
])
def test_bad_compressed_payloads_are_one_line(fmt: str, data: bytes, words: str) -> None:
    from nmr.data.compressed import decode_compressed

    with pytest.raises(ImageDecodeError, match=words) as info:
        decode_compressed(_Compressed(fmt, data), '/cam')
    assert '\n' not in str(info.value) and '/cam' in str(info.value)
