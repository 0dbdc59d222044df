"""``sensor_msgs/Image`` <-> numpy, for rclpy and rosbags messages alike (no cv_bridge).

Both message flavours are duck-typed on ``height, width, encoding, is_bigendian, step, data``: rclpy keeps
``data`` as an ``array.array('B')``, rosbags as a ``numpy`` uint8 array; both expose the buffer protocol,
so decoding is one ``np.ndarray`` view with explicit strides (row stride = ``step``) and no Python loop
over pixels. The decoded array is a view of the message's bytes wherever that is possible (native byte
order); it is read-only when the buffer is. Copy it before modifying it in place.

Encoding the other way (``numpy_to_image_fields``) needs to know which flavour is filled: rosbags wants a
numpy uint8 ``data``, rclpy wants an ``array.array('B')`` (its setter checks any other sequence element by
element in Python, which costs tens of milliseconds per frame).
"""

from __future__ import annotations

import array
import sys
from typing import Any, Literal

import cv2
import numpy as np

from nmr.domain import STREAM_ENCODINGS
from nmr.errors import ImageDecodeError

#: encoding -> (numpy base dtype, channels)
_LAYOUT: dict[str, tuple[np.dtype, int]] = {
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    'rgba8': (np.dtype(np.uint8), 4),
    'bgra8': (np.dtype(np.uint8), 4),
    'mono8': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1),
    '16UC1': (np.dtype(np.uint16), 1),
    '32FC1': (np.dtype(np.float32), 1),
    '32FC2': (np.dtype(np.float32), 2),
}

SUPPORTED_ENCODINGS: frozenset[str] = frozenset(_LAYOUT)

#: colour encodings that ``to_rgb`` accepts (grey is replicated to three channels).
COLOUR_ENCODINGS: frozenset[str] = frozenset(STREAM_ENCODINGS['rgb'])

DataType = Literal['numpy', 'array', 'bytes']

_CASELESS: dict[str, str] = {e.lower(): e for e in _LAYOUT}


def _where(topic: str) -> str:
    return f' on topic {topic}' if topic else ''


def layout(encoding: str, topic: str = '') -> tuple[np.dtype, int]:
    """(dtype, channels) of a supported encoding; ImageDecodeError naming the encoding otherwise.

    Encodings are matched exactly, as cv_bridge and every ROS consumer match them: a driver that
    publishes ``'MONO16'`` or ``'mono16 '`` would break the next tool in the chain too, so it is refused
    with a "did you mean" instead of being silently accepted here.
    """
    try:
        return _LAYOUT[encoding]
    except (KeyError, TypeError):
        pass
    text = str(encoding)
    near = _CASELESS.get(text.strip().lower())
    hint = f' (did you mean {near!r}? encodings are case- and whitespace-sensitive)' if near else ''
    raise ImageDecodeError(
        f'unsupported image encoding {text[:40]!r}{_where(topic)}{hint}: supported are '
        f'{", ".join(sorted(SUPPORTED_ENCODINGS))}; publish or remap one of those'
    )


def _buffer(data: Any) -> np.ndarray:
    """The message bytes as a flat uint8 array, without copying when the buffer protocol allows."""
    if isinstance(data, np.ndarray):
        flat = data.reshape(-1)
        return flat if flat.dtype == np.uint8 else flat.view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)  # a plain list: unavoidable copy


def _check_geometry(encoding: str, height: int, width: int, step: int, row_bytes: int, n_bytes: int,
                    where: str) -> None:
    """Refuse impossible sizes from the header fields alone, before any array exists.

    Every check compares claimed sizes with the bytes actually present, so a message claiming gigabytes
    (corrupt ``width``, ``height`` or ``step``, or an unsigned field that wrapped around) costs nothing.
    """
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f'empty {encoding} image{where} ({width}x{height}): check the camera driver')
    if step < row_bytes:
        raise ImageDecodeError(
            f'{encoding} image{where}: step {step} is shorter than one row ({width} px x '
            f'{row_bytes // width} B = {row_bytes} B); the publisher filled step wrongly'
        )
    if n_bytes != step * height:
        why = 'truncated' if n_bytes < step * height else 'extra bytes'
        raise ImageDecodeError(
            f'{encoding} image{where} ({width}x{height}): data has {n_bytes} bytes, expected step*height = '
            f'{step}*{height} = {step * height} ({why}, or wrong step/height)'
        )


def image_to_numpy(msg: Any, topic: str = '', max_pixels: int | None = None) -> np.ndarray:
    """Decode an Image message to ``HxW`` (one channel) or ``HxWxC`` in the message's channel order.

    Honours ``step`` (padded rows) and ``is_bigendian``. Raises ImageDecodeError, naming the encoding
    and ``topic``, for an unsupported encoding, zero size, a step shorter than a row, or a data length
    that is not ``step * height``; nothing is allocated before those checks pass. The result is always
    aligned with strides that are multiples of its item size (what torch.from_numpy and OpenCV need):
    a view when the message allows it, else one copy (byte swap, or a step that is not a multiple of
    the item size). `max_pixels` refuses larger images (a registered output at that size would cost far
    more than the message itself).
    """
    encoding = msg.encoding
    dtype, channels = layout(encoding, topic)
    encoding = str(encoding)
    where = _where(topic)
    try:
        height, width, step = int(msg.height), int(msg.width), int(msg.step)
    except (TypeError, ValueError):
        raise ImageDecodeError(f'{encoding} image{where}: height/width/step are not integers') from None
    row_bytes = width * channels * dtype.itemsize
    try:
        buf = _buffer(msg.data)
    except (TypeError, ValueError, OverflowError):
        raise ImageDecodeError(f'{encoding} image{where}: data is not a byte sequence') from None
    _check_geometry(encoding, height, width, step, row_bytes, buf.size, where)
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(f'{encoding} image{where} is {width}x{height} pixels, more than the {max_pixels} '
                               'allowed for this input; ignored (raise max_pixels for this input if the camera '
                               'really is that large)')
    big = bool(msg.is_bigendian) and dtype.itemsize > 1
    stored = dtype.newbyteorder('>' if big else '<')
    shape: tuple[int, ...] = (height, width, channels)
    strides: tuple[int, ...] = (step, channels * dtype.itemsize, dtype.itemsize)
    if channels == 1:
        shape, strides = shape[:2], strides[:2]
    out = np.ndarray(shape=shape, dtype=stored, buffer=buf, offset=0, strides=strides)
    if not stored.isnative:
        return out.astype(dtype)  # byte swap: a fresh, aligned, native copy
    if step % dtype.itemsize or not out.flags.aligned:
        return out.copy()  # odd padding or an unaligned buffer: copy to aligned rows (numpy calls a
        # one-row view "contiguous" whatever its row stride, so ascontiguousarray would not copy it)
    return out


def numpy_to_image_fields(arr: np.ndarray, encoding: str, data_type: DataType = 'numpy') -> dict[str, Any]:
    """Fields ``height width encoding is_bigendian step data`` for an Image of ``arr`` in ``encoding``.

    ``arr`` must match the encoding (``HxW`` or ``HxWx1`` for one channel, ``HxWxC`` otherwise; dtype
    per encoding; any byte order, converted to native). Rows are packed (step = width x pixel bytes).
    ``data_type``: ``'numpy'`` (uint8 array, for rosbags messages), ``'array'`` (``array.array('B')``,
    for rclpy messages) or ``'bytes'``.
    """
    dtype, channels = layout(encoding)
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1 and channels == 1:
        a = a[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if a.ndim != expected_ndim or (channels > 1 and a.shape[2] != channels):
        want = 'HxW' if channels == 1 else f'HxWx{channels}'
        raise ImageDecodeError(f'cannot encode array of shape {a.shape} as {encoding}: expected {want}')
    if a.dtype.kind != dtype.kind or a.dtype.itemsize != dtype.itemsize:
        raise ImageDecodeError(f'cannot encode {a.dtype} array as {encoding}: expected {dtype}')
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageDecodeError(f'cannot encode an empty array ({a.shape}) as {encoding}')
    native = dtype.newbyteorder('=')
    a = np.ascontiguousarray(a, dtype=native)  # no copy when already native and contiguous
    flat = a.reshape(-1).view(np.uint8)
    data: Any
    if data_type == 'numpy':
        data = flat
    elif data_type == 'array':
        data = array.array('B')
        data.frombytes(flat.data)  # one copy; array.array('B', bytes) would make two
    elif data_type == 'bytes':
        data = flat.tobytes()
    else:
        raise ValueError(f'data_type must be numpy, array or bytes, not {data_type!r}')
    return {
        'height': int(a.shape[0]),
        'width': int(a.shape[1]),
        'encoding': encoding,
        'is_bigendian': int(sys.byteorder == 'big' and dtype.itemsize > 1),
        'step': int(a.shape[1] * channels * dtype.itemsize),
        'data': data,
    }


def to_rgb(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Any colour encoding (rgb8, bgr8, rgba8, bgra8; mono8 replicated) -> contiguous ``HxWx3`` RGB uint8.

    rgb8 input that is already contiguous is returned as is (no copy).
    """
    if encoding not in COLOUR_ENCODINGS:
        raise ImageDecodeError(
            f'moving image encoding {encoding!r} is not a colour encoding: use one of '
            f'{", ".join(sorted(COLOUR_ENCODINGS))}'
        )
    dtype, channels = _LAYOUT[encoding]
    a = np.asarray(arr)
    if a.dtype != dtype or (channels == 1 and a.ndim != 2) or (channels > 1 and a.shape[2:] != (channels,)):
        raise ImageDecodeError(f'array of shape {a.shape} and dtype {a.dtype} is not a {encoding} image')
    if encoding == 'rgb8':
        return np.ascontiguousarray(a)
    code = {
        'bgr8': cv2.COLOR_BGR2RGB,
        'rgba8': cv2.COLOR_RGBA2RGB,
        'bgra8': cv2.COLOR_BGRA2RGB,
        'mono8': cv2.COLOR_GRAY2RGB,
    }[encoding]
    return cv2.cvtColor(np.ascontiguousarray(a), code)


def stamp_ns(header: Any) -> int:
    """Integer nanoseconds of ``header.stamp`` (or of a ``builtin_interfaces/Time`` passed directly)."""
    stamp = getattr(header, 'stamp', header)
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
