"""numpy <-> rclpy sensor_msgs/Image and header helpers (no cv_bridge: nmr.data.encodings does the work)."""

from __future__ import annotations

from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from nmr.data.encodings import image_to_numpy, numpy_to_image_fields


def to_image_msg(arr: np.ndarray, encoding: str, header: Header) -> Image:
    """An rclpy Image of `arr` in `encoding`, carrying a copy of `header` (stamp and frame_id)."""
    fields = numpy_to_image_fields(arr, encoding, data_type='array')
    msg = Image()
    msg.header = copy_header(header)
    msg.height = fields['height']
    msg.width = fields['width']
    msg.encoding = fields['encoding']
    msg.is_bigendian = fields['is_bigendian']
    msg.step = fields['step']
    msg.data = fields['data']
    return msg


def from_image_msg(msg: Any, topic: str = '', max_pixels: int | None = None) -> np.ndarray:
    """The message's pixels (a view where possible); ImageDecodeError naming `topic` if malformed."""
    return image_to_numpy(msg, topic, max_pixels)


def copy_header(header: Header) -> Header:
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec), frame_id=header.frame_id)


def header_stamp_ns(header: Header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def time_from_ns(stamp_ns: int) -> Time:
    return Time(sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000))
