"""``sensor_msgs/CompressedImage`` -> numpy, as image_transport's `compressed` and `compressedDepth`
plugins write it (recorded bags very often hold only these). OpenCV decodes; no cv_bridge.

Formats (``msg.format``):
- `compressed`: ``"<encoding>; jpeg compressed <fmt>"`` or ``"<encoding>; png compressed <fmt>"`` (older
  drivers write just ``"jpeg"`` / ``"png"``). The payload is a plain JPEG/PNG file.
- `compressedDepth`: ``"16UC1; compressedDepth png"`` or ``"32FC1; compressedDepth png"``. The payload is a
  12-byte header (int32 format, float32 depthQuantA, float32 depthQuantB) and a 16-bit PNG; 16UC1 is the
  depth itself, 32FC1 is quantised inverse depth: ``depth = A / (v - B)``, ``v = 0`` = no data. The newer
  ``rvl`` codec is not decoded: republish with png.

Like ``image_to_numpy``, the result is an array in a ROS encoding that the rest of nmr understands, and
every bad payload is one ImageDecodeError naming the topic and what to do. Duck-typed on ``format`` and
``data``, so rclpy and rosbags messages both work.
"""

from __future__ import annotations

import struct
from typing import Any

import cv2
import numpy as np

from nmr.data.encodings import _buffer, _where
from nmr.domain import DEFAULT_MAX_PIXELS
from nmr.errors import ImageDecodeError

COMPRESSED_MSGTYPE = 'sensor_msgs/msg/CompressedImage'
DEPTH_HEADER_BYTES = 12

_COLOUR = {'rgb8', 'bgr8', 'rgba8', 'bgra8', 'rgb16', 'bgr16', 'rgba16', 'bgra16'}


def is_compressed(msg: Any) -> bool:
    """True for a CompressedImage (it has `format`, an Image has `encoding`)."""
    return hasattr(msg, 'format') and not hasattr(msg, 'encoding')


def decode_compressed(msg: Any, topic: str = '', max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """(array, ROS encoding) of a CompressedImage; ImageDecodeError naming `topic` if it cannot be decoded,
    or if its PNG/JPEG header announces more than `max_pixels` (checked before anything is decoded)."""
    fmt = str(msg.format).strip()
    data = _buffer(msg.data)
    if data.size == 0:
        raise ImageDecodeError(f'empty CompressedImage{_where(topic)} (format {fmt!r}): check the publisher')
    if 'compresseddepth' in fmt.lower():
        return _decode_depth(fmt, data, topic, max_pixels)
    _check_size(data, fmt, topic, max_pixels)
    return _decode_plain(fmt, data, topic)


def encoded_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's SOF marker, without decoding; None if neither."""
    head = bytes(data[:8])
    if head == b'\x89PNG\r\n\x1a\n' and len(data) >= 24 and bytes(data[12:16]) == b'IHDR':
        width, height = struct.unpack('>II', bytes(data[16:24]))
        return int(width), int(height)
    if head[:2] != b'\xff\xd8':
        return None
    buf = np.asarray(data, np.uint8).reshape(-1)  # no copy
    pos = 2
    while pos + 4 <= len(buf):
        if buf[pos] != 0xFF:
            return None
        marker = int(buf[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            pos += 2
            continue
        (length,) = struct.unpack('>H', bytes(buf[pos + 2:pos + 4]))
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            if pos + 9 > len(buf):
                return None
            height, width = struct.unpack('>HH', bytes(buf[pos + 5:pos + 9]))
            return int(width), int(height)
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def _check_size(data: np.ndarray, fmt: str, topic: str, max_pixels: int) -> None:
    size = encoded_size(data)
    if size is None:
        raise ImageDecodeError(f'CompressedImage{_where(topic)} (format {fmt!r}, {data.size} bytes) is not a '
                               'decodable JPEG/PNG (no readable PNG/JPEG header): check the publisher or the bag')
    width, height = size
    if width * height > max_pixels:
        raise ImageDecodeError(f'CompressedImage{_where(topic)} claims {width}x{height} pixels, more than the '
                               f'{max_pixels} allowed for this input; not decoded (raise max_pixels for this '
                               'input if the camera really is that large)')


def _original_encoding(fmt: str) -> str:
    """The encoding before compression: the text before ';' ('' for bare "jpeg" / "png")."""
    return fmt.split(';', 1)[0].strip() if ';' in fmt else ''


def _imdecode(data: np.ndarray, fmt: str, topic: str) -> np.ndarray:
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageDecodeError(f'CompressedImage{_where(topic)} (format {fmt!r}, {data.size} bytes) is not a '
                               'decodable JPEG/PNG: check the publisher or the bag')
    return image


def _decode_plain(fmt: str, data: np.ndarray, topic: str) -> tuple[np.ndarray, str]:
    original = _original_encoding(fmt)
    image = _imdecode(data, fmt, topic)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if image.dtype == np.uint16:
            return image, original if original in ('mono16', '16UC1') else 'mono16'
        if image.dtype == np.uint8:
            return image, 'mono8'
    elif image.dtype == np.uint8 and image.shape[2] in (3, 4):  # OpenCV decodes colour as BGR(A)
        return image, 'bgr8' if image.shape[2] == 3 else 'bgra8'
    raise ImageDecodeError(f'CompressedImage{_where(topic)} (format {fmt!r}) decodes to {image.dtype} with '
                           f'shape {image.shape}: expected 8-bit colour, mono8 or mono16')


def _decode_depth(fmt: str, data: np.ndarray, topic: str, max_pixels: int) -> tuple[np.ndarray, str]:
    original = _original_encoding(fmt) or '16UC1'
    if 'rvl' in fmt.lower():
        raise ImageDecodeError(f'compressedDepth{_where(topic)} uses the rvl codec, which nmr does not decode: '
                               'set the publisher\'s compressedDepth format to png')
    if original not in ('16UC1', '32FC1'):
        raise ImageDecodeError(f'compressedDepth{_where(topic)} holds {original!r}: expected 16UC1 or 32FC1')
    if data.size <= DEPTH_HEADER_BYTES:
        raise ImageDecodeError(f'compressedDepth{_where(topic)} has {data.size} bytes, less than its '
                               f'{DEPTH_HEADER_BYTES}-byte header: check the publisher or the bag')
    _codec, quant_a, quant_b = struct.unpack('<iff', data[:DEPTH_HEADER_BYTES].tobytes())
    _check_size(data[DEPTH_HEADER_BYTES:], fmt, topic, max_pixels)
    image = _imdecode(data[DEPTH_HEADER_BYTES:], fmt, topic)
    if image.ndim != 2 or image.dtype != np.uint16:
        raise ImageDecodeError(f'compressedDepth{_where(topic)} decodes to {image.dtype} {image.shape}: '
                               'expected a 16-bit single-channel PNG')
    if original == '16UC1':
        return image, '16UC1'
    valid = image != 0
    depth = np.full(image.shape, np.nan, np.float32)
    depth[valid] = quant_a / (image[valid].astype(np.float32) - quant_b)
    return depth, '32FC1'


def encode_compressed(arr: np.ndarray, encoding: str, transport: str = 'compressed') -> tuple[str, bytes]:
    """(format, data) of a CompressedImage as image_transport writes it (bags and tests).

    Colour and mono8 become JPEG (`compressed`), mono16/16UC1 PNG; `compressedDepth` is 16UC1 in a PNG
    with the 12-byte header (32FC1 as quantised inverse depth, image_transport's default quantisation).
    """
    if transport == 'compressedDepth':
        return _encode_depth(arr, encoding)
    if encoding in ('mono16', '16UC1'):
        ok, buf = cv2.imencode('.png', arr)
        fmt = f'{encoding}; png compressed mono16'
    else:
        bgr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR) if encoding == 'rgb8' else arr
        ok, buf = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        fmt = f'{encoding}; jpeg compressed {"mono8" if encoding == "mono8" else "bgr8"}'
    if not ok:
        raise ImageDecodeError(f'cannot compress a {encoding} image of shape {arr.shape}')
    return fmt, buf.tobytes()


def _encode_depth(arr: np.ndarray, encoding: str) -> tuple[str, bytes]:
    quant_a, quant_b = 100.0, 10.0  # image_transport's compressedDepth defaults (depth_quantization, max_depth)
    if encoding == '32FC1':
        valid = np.isfinite(arr) & (arr > 0)
        q = np.zeros(arr.shape, np.uint16)
        q[valid] = np.clip(quant_a / arr[valid] + quant_b, 1, 65535).astype(np.uint16)
        arr = q
    ok, buf = cv2.imencode('.png', arr.astype(np.uint16))
    if not ok:
        raise ImageDecodeError(f'cannot compress a {encoding} depth image of shape {arr.shape}')
    header = struct.pack('<iff', 0, quant_a, quant_b)
    return f'{encoding}; compressedDepth png', header + buf.tobytes()
