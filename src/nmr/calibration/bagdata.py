"""What calibration reads from the bags: per stream the header stamps and camera_info, then a few frames.

Why two passes: a bag holds thousands of frames, calibration needs a few dozen moments. The first pass
reads only header stamps from the raw CDR bytes (no image is decoded) and the first camera_info of each
image topic; the moments are chosen from the stamps; the second pass decodes just the frames they need.

A *moment* is one depth frame (the geometry: its depth gives every pixel a 3D point) with, around its
stamp, the two RGB frames that bracket it and a short window of LWIR frames (the LWIR time offset is
searched within that window). Without depth, a moment is one LWIR frame and the two RGB frames around it.
Between consecutive frames of one camera the dense optical flow (OpenCV DIS, mono-modal, reliable) is kept:
it lets the objective look at a camera "between" two frames, i.e. at any exposure time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from nmr.data.bag_reader import IMAGE_TYPES, check_topics, decode_image, open_bag, raw_header_stamp
from nmr.data.encodings import to_rgb
from nmr.errors import BagError, NmrUserError
from nmr.geometry.camera import CameraModel

#: the LWIR time offset is searched within +- this (seconds); the LWIR window around a moment covers it
MAX_TIME_OFFSET_S = 0.05


def info_topic(image_topic: str) -> str:
    """The ``camera_info`` sibling of an image topic (``.../image_raw`` -> ``.../camera_info``); for an
    image_transport topic (``.../image_raw/compressed``) that of its base topic."""
    base = image_topic
    if base.rsplit('/', 1)[-1] in ('compressed', 'compressedDepth'):
        base = base.rsplit('/', 1)[0]
    return base.rsplit('/', 1)[0] + '/camera_info'


@dataclass
class Stream:
    """One image topic of one bag: sorted header stamps (ns) and the camera_info model (None: none)."""

    name: str
    topic: str
    stamps: np.ndarray
    info: CameraModel | None
    size: tuple[int, int] | None = None  # (width, height) of the first frame, when read
    frame_id: str | None = None  # the camera's frame (camera_info's header, else the first image's)


def index_bag(bag: Path, topics: Mapping[str, str]) -> dict[str, Stream]:
    """Stamps and camera_info of each stream (``name -> topic``) in one bag; BagError (one line) for a
    missing topic, a wrong message type or a topic without messages."""
    with open_bag(bag) as reader:
        check_topics(reader, list(topics.values()), bag, IMAGE_TYPES)
        by_topic = {c.topic: c for c in reader.connections}
        out: dict[str, Stream] = {}
        for name, topic in topics.items():
            conn = by_topic[topic]
            stamps = []
            first = None
            for _, _, raw in reader.messages(connections=[conn]):
                stamps.append(raw_header_stamp(raw))
                first = raw if first is None else first
            if not stamps:
                raise BagError(f'topic {topic} in bag {bag} has no messages; record the {name} camera too')
            try:
                head: Any = reader.deserialize(first, conn.msgtype) if first is not None else None
                frame_id: str | None = str(head.header.frame_id) or None
            except Exception:  # an undecodable first frame: load_moments names it if it is needed
                frame_id = None
            info = None
            itopic = info_topic(topic)
            if itopic in by_topic and by_topic[itopic].msgtype == 'sensor_msgs/msg/CameraInfo':
                ic = by_topic[itopic]
                for _, _, raw in reader.messages(connections=[ic]):
                    msg: Any = reader.deserialize(raw, ic.msgtype)
                    frame_id = str(msg.header.frame_id) or frame_id
                    if any(msg.k):  # an all-zero K means "uncalibrated" (camera_info_manager's default)
                        info = CameraModel.from_camera_info(msg, where=f'{itopic} in {bag}')
                    break
            out[name] = Stream(name, topic, np.unique(np.asarray(stamps, dtype=np.int64)), info, frame_id=frame_id)
    return out


@dataclass
class Moment:
    """One calibration moment: the frames (float32 images) and stamps (seconds, relative) it needs."""

    bag: int
    t: float  # exposure time of the geometry frame (depth, or LWIR without depth), seconds
    depth: np.ndarray | None  # HxW metres, 0 = none
    rgb: list[np.ndarray]  # two grey frames bracketing t, [0, 1]
    rgb_t: list[float]
    rgb_flow: np.ndarray  # HxWx2 DIS flow rgb[0] -> rgb[1]
    lwir: list[np.ndarray] = field(default_factory=list)  # consecutive LWIR frames, normalised [0, 1]
    lwir_t: list[float] = field(default_factory=list)  # their stamps (seconds, same origin as t)
    lwir_flow: list[np.ndarray] = field(default_factory=list)  # DIS flow lwir[i] -> lwir[i + 1]


def pick_moments(streams: Mapping[str, Stream], count: int, use_depth: bool) -> list[dict[str, list[int]]]:
    """Evenly spread moments: per moment the frame indices it needs of each stream.

    The geometry frame (depth, else LWIR) must have an RGB frame on each side and a full LWIR window
    (+- MAX_TIME_OFFSET_S plus one frame) around it; the others are skipped.
    """
    geo = streams['depth' if use_depth else 'lwir']
    rgb = streams['rgb'].stamps
    lwir = streams['lwir'].stamps if 'lwir' in streams else None
    good: list[dict[str, list[int]]] = []
    for i, s in enumerate(geo.stamps):
        j = int(np.searchsorted(rgb, s, side='right')) - 1
        if j < 0 or j + 1 >= len(rgb) or (rgb[j + 1] - rgb[j]) > 0.2e9:
            continue
        m = {'geo': [i], 'rgb': [j, j + 1]}
        if use_depth and lwir is not None:
            lo = int(np.searchsorted(lwir, s - (MAX_TIME_OFFSET_S * 1e9), side='right')) - 2
            hi = int(np.searchsorted(lwir, s + (MAX_TIME_OFFSET_S * 1e9), side='left')) + 1
            if lo < 0 or hi >= len(lwir):
                continue
            m['lwir'] = list(range(lo, hi + 1))
        good.append(m)
    if not good:
        raise BagError('no usable moment in the bag: every frame lacks an RGB frame on each side (or LWIR '
                       'frames around it); record at least a few seconds of all cameras together')
    if len(good) <= count:
        return good
    pick = np.linspace(0, len(good) - 1, count).round().astype(int)
    return [good[k] for k in pick]


def _grey(arr: np.ndarray, encoding: str) -> np.ndarray:
    rgb = to_rgb(arr, encoding)
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0


def _thermal(arr: np.ndarray) -> np.ndarray:
    """LWIR counts (mono16 or mono8) -> [0, 1] by the frame's 1st and 99th percentiles (AGC-like)."""
    a = arr.astype(np.float32)
    lo, hi = np.percentile(a, [1.0, 99.0])
    return np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def _metres(arr: np.ndarray, encoding: str, topic: str) -> np.ndarray:
    if encoding in ('16UC1', 'mono16'):
        return arr.astype(np.float32) / 1000.0
    if encoding == '32FC1':
        d = arr.astype(np.float32)
        return np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    raise NmrUserError(f'depth topic {topic} has encoding {encoding}; calibrate reads 16UC1 (mm) or 32FC1 (m)')


def _dis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense optical flow a -> b (HxWx2 float32), OpenCV DIS on 8-bit images (deterministic)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]
    to8 = lambda x: np.clip(x * 255.0, 0, 255).astype(np.uint8)  # noqa: E731
    return dis.calc(to8(a), to8(b), None)


def load_moments(
    bag: Path, bag_index: int, streams: Mapping[str, Stream], picks: Sequence[dict[str, list[int]]],
    use_depth: bool, progress: Callable[[], None] | None = None,
) -> list[Moment]:
    """Decode the frames the moments need (one pass over the bag) and build the moments."""
    geo_name = 'depth' if use_depth else 'lwir'
    need: dict[str, dict[int, int]] = {name: {} for name in streams}  # name -> stamp -> index
    for m in picks:
        need[geo_name][int(streams[geo_name].stamps[m['geo'][0]])] = 1
        for j in m['rgb']:
            need['rgb'][int(streams['rgb'].stamps[j])] = 1
        for k in m.get('lwir', []):
            need['lwir'][int(streams['lwir'].stamps[k])] = 1
    frames: dict[str, dict[int, np.ndarray]] = {name: {} for name in streams}
    topic_name = {s.topic: name for name, s in streams.items()}
    t0 = int(streams['rgb'].stamps[0])
    with open_bag(bag) as reader:
        conns = [c for c in reader.connections if c.topic in topic_name]
        for conn, _, raw in reader.messages(connections=conns):
            name = topic_name[conn.topic]
            stamp = raw_header_stamp(raw)
            if stamp not in need[name] or stamp in frames[name]:
                continue
            try:
                arr, enc = decode_image(reader.deserialize(raw, conn.msgtype), conn.topic)
            except NmrUserError:
                raise
            except Exception as exc:
                raise BagError(f'cannot decode a frame of {conn.topic} in {bag}: {exc}') from None
            if name == 'rgb':
                frames[name][stamp] = _grey(arr, enc)
            elif name == 'lwir':
                frames[name][stamp] = _thermal(arr)
            else:
                frames[name][stamp] = _metres(arr, enc, conn.topic)
            if streams[name].size is None:
                streams[name].size = (arr.shape[1], arr.shape[0])
    sec = lambda s: (int(s) - t0) / 1e9  # noqa: E731
    out: list[Moment] = []
    for m in picks:
        gs = int(streams[geo_name].stamps[m['geo'][0]])
        rs = [int(streams['rgb'].stamps[j]) for j in m['rgb']]
        if gs not in frames[geo_name] or any(s not in frames['rgb'] for s in rs):
            continue  # a frame that could not be read (skipped message)
        rgb = [frames['rgb'][s] for s in rs]
        mo = Moment(bag_index, sec(gs), frames[geo_name][gs] if use_depth else None, rgb,
                    [sec(s) for s in rs], _dis(rgb[0], rgb[1]))
        if not use_depth:
            mo.lwir, mo.lwir_t = [frames['lwir'][gs]], [sec(gs)]
        elif 'lwir' in m:
            ls = [int(streams['lwir'].stamps[k]) for k in m['lwir']]
            if any(s not in frames['lwir'] for s in ls):
                continue
            mo.lwir = [frames['lwir'][s] for s in ls]
            mo.lwir_t = [sec(s) for s in ls]
            mo.lwir_flow = [_dis(a, b) for a, b in zip(mo.lwir[:-1], mo.lwir[1:])]
        out.append(mo)
        if progress is not None:
            progress()
    return out


def nominal_camera(width: int, height: int, hfov_deg: float = 60.0) -> CameraModel:
    """A guess for a camera without camera_info: centred principal point, square pixels, ``hfov_deg``."""
    f = (width / 2) / math.tan(math.radians(hfov_deg) / 2)
    return CameraModel(width, height, f, f, (width - 1) / 2, (height - 1) / 2)

