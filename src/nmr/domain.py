"""The domain's facts, written once: cameras, pairs, accepted encodings, default topics, backends.

Every layer reads these names from here (this module imports nothing from nmr), so that adding a camera,
an encoding or a backend is one edit and the node, `nmr register-bag`, training, the synthetic rig and the
model files cannot disagree about them. Values follow SPEC ("Fixed conventions").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Camera:
    """One camera stream of the rig: its kind, the driver's default topic, the encodings nmr reads and the
    image_transport transports it may arrive in ('raw' = sensor_msgs/Image on the topic itself; the others
    are sensor_msgs/CompressedImage on `<topic>/<transport>`, as image_transport publishes and bags record)."""

    kind: str
    default_topic: str
    encodings: tuple[str, ...]
    transports: tuple[str, ...] = ('raw', 'compressed')


@dataclass(frozen=True)
class Pair:
    """One registration problem with its own model: the moving camera is warped onto the fixed one."""

    name: str
    moving: str
    fixed: str


#: The rig's cameras. RGB also accepts mono8 (replicated to grey RGB); LWIR is raw counts (mono16) or an
#: 8-bit image; depth is millimetres (16UC1, 0 = no data) or metres (32FC1, NaN/0 = no data). Default
#: topics are the realsense-ros and flir_boson_usb drivers' own.
CAMERAS: dict[str, Camera] = {
    'rgb': Camera('rgb', '/camera/camera/color/image_raw', ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8')),
    'lwir': Camera('lwir', '/flir_boson/image_raw', ('mono16', 'mono8')),
    'depth': Camera('depth', '/camera/camera/depth/image_rect_raw', ('16UC1', '32FC1'),
                    ('raw', 'compressed', 'compressedDepth')),
}

#: The pairs, one trained model each; the moving image is always RGB.
PAIR_SPECS: dict[str, Pair] = {
    'rgb_lwir': Pair('rgb_lwir', 'rgb', 'lwir'),
    'rgb_depth': Pair('rgb_depth', 'rgb', 'depth'),
}

#: Inference backends, fastest first where each can run (`auto` picks among them).
BACKENDS: tuple[str, ...] = ('tensorrt', 'onnxruntime', 'torch')

# Views of the tables above, in the shapes the code uses most.
STREAMS: tuple[str, ...] = tuple(CAMERAS)
PAIRS: tuple[str, ...] = tuple(PAIR_SPECS)
PAIR_FIXED_KIND: dict[str, str] = {p.name: p.fixed for p in PAIR_SPECS.values()}
FIXED_KINDS: tuple[str, ...] = tuple(PAIR_FIXED_KIND.values())
FIXED_KIND_PAIR: dict[str, str] = {kind: pair for pair, kind in PAIR_FIXED_KIND.items()}
DEFAULT_TOPICS: dict[str, str] = {c.kind: c.default_topic for c in CAMERAS.values()}
#: Default largest image (width x height) an input may decode to: 4096 x 4096, beyond any camera nmr is
#: used with. A 125 kB PNG can claim 8000 x 8000 (64 Mpx, hundreds of MB once decoded and registered).
DEFAULT_MAX_PIXELS = 4096 * 4096
STREAM_ENCODINGS: dict[str, tuple[str, ...]] = {c.kind: c.encodings for c in CAMERAS.values()}
TRANSPORTS: dict[str, tuple[str, ...]] = {c.kind: c.transports for c in CAMERAS.values()}
BACKEND_CHOICES: tuple[str, ...] = ('auto', *BACKENDS)
#: Pairs whose network flow is refined on tiles by default (nmr.inference.tiles): where it measured better for
#: the shipped model on held-out selection scenes (docs/results.md, session 9). The node's `refine_tiles`,
#: `nmr register-bag` and `nmr evaluate --refine-tiles auto` all start from this.
REFINE_TILES_PAIRS: tuple[str, ...] = ('rgb_depth',)
