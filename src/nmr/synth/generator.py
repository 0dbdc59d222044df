"""Render a synthetic rig recording into a rosbag2 bag (and optionally an image-pair manifest).

Frames are processed in stamp order, as a recorder would see them. Each fixed frame (LWIR, depth) is
paired with the RGB frame nearest in stamp (``groundtruth.nearest_index``); that RGB view is rendered on
demand and cached until the RGB stream has moved past it, so nothing is rendered twice. Every random
draw comes from a generator seeded by ``(seed, stream, frame)``, so the same seed gives the same bag
content whatever the processing order.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from nmr.data.bag_writer import BagWriter
from nmr.errors import ConfigError
from nmr.synth.cameras import Camera, Rig, default_rig
from nmr.synth.depthsensor import render_depth
from nmr.synth.groundtruth import gt_flow, landmarks, nearest_index, resize_flow_field
from nmr.synth.render import Geometry, render_geometry
from nmr.synth.scene import Scene, generate_scene
from nmr.synth.shading import render_rgb, surface
from nmr.synth.thermal import render_lwir
from nmr.synth.timing import StreamTiming, frame_stamps, seconds

IMAGE_TOPICS = {
    'rgb': '/camera/camera/color/image_raw',
    'lwir': '/flir_boson/image_raw',
    'depth': '/camera/camera/depth/image_rect_raw',
}
ENCODINGS = {'rgb': 'rgb8', 'lwir': 'mono16', 'depth': '16UC1'}
PAIRS = {'rgb_lwir': 'lwir', 'rgb_depth': 'depth'}
_STREAM_CODE = {'rgb': 0, 'lwir': 1, 'depth': 2}


def info_topic(image_topic: str) -> str:
    """The ``camera_info`` sibling of an image topic (``.../image_raw`` -> ``.../camera_info``)."""
    return image_topic.rsplit('/', 1)[0] + '/camera_info'


def gt_topics(pair: str) -> tuple[str, str]:
    """``(flow topic, valid topic)`` of a pair's ground truth."""
    return f'/nmr_gt/{pair}/flow', f'/nmr_gt/{pair}/valid'


@dataclass
class SynthConfig:
    """What to generate. ``lwir_rate`` 30, 60 or 9 Hz like a Boson; RGB and depth like a RealSense."""

    out: Path
    duration_s: float = 3.0
    seed: int = 0
    storage: str = 'mcap'
    size_scale: float = 1.0
    rgb_rate: float = 30.0
    lwir_rate: float = 30.0
    depth_rate: float = 30.0
    export_pairs: Path | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if not self.duration_s > 0:
            raise ConfigError(f'duration {self.duration_s} s: give a positive --duration or --frames')
        if not 0.05 <= self.size_scale <= 4.0:
            raise ConfigError(f'--size-scale {self.size_scale}: use a value between 0.05 and 4')
        for name in ('rgb_rate', 'lwir_rate', 'depth_rate'):
            if not 0.5 <= getattr(self, name) <= 240:
                raise ConfigError(f'{name} {getattr(self, name)} Hz: use 0.5 to 240 Hz')


def stream_timings(cfg: SynthConfig, rng: np.random.Generator) -> dict[str, StreamTiming]:
    """Free-running streams: RGB and depth nearly in step (one device), the LWIR camera offset."""
    return {
        'rgb': StreamTiming(cfg.rgb_rate, 0.002, 0.0004),
        'lwir': StreamTiming(cfg.lwir_rate, float(rng.uniform(0.004, 0.011)), 0.001),
        'depth': StreamTiming(cfg.depth_rate, float(rng.uniform(0.0005, 0.003)), 0.0003),
    }


@dataclass
class PairStats:
    """Ground-truth statistics of one pair over all its frames (pixels, valid pixels only)."""

    frames: int = 0
    valid_fraction: float = 0.0
    mean_magnitude: float = 0.0
    max_magnitude: float = 0.0
    mean_residual: float = 0.0  # |flow - plain-resize flow|: the misalignment left after resizing
    max_residual: float = 0.0
    _sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])

    def add(self, flow: np.ndarray, valid: np.ndarray, resize: np.ndarray) -> None:
        self.frames += 1
        mag = np.linalg.norm(flow[valid], axis=1)
        res = np.linalg.norm((flow - resize)[valid], axis=1)
        self._sums[0] += float(valid.mean())
        self._sums[1] += float(mag.sum())
        self._sums[2] += float(res.sum())
        self._sums[3] += float(mag.size)
        if mag.size:
            self.max_magnitude = max(self.max_magnitude, float(mag.max()))
            self.max_residual = max(self.max_residual, float(res.max()))
        n = max(self._sums[3], 1.0)
        self.valid_fraction = self._sums[0] / self.frames
        self.mean_magnitude = self._sums[1] / n
        self.mean_residual = self._sums[2] / n


@dataclass
class SynthResult:
    path: Path
    counts: dict[str, int]
    render_ms: dict[str, float]  # mean per frame per camera (geometry + materials + sensor model)
    gt_ms: float
    pairs: dict[str, PairStats]
    elapsed_s: float
    rig: Rig
    scene_objects: int


class _PairExporter:
    """Writes DIR/<pair>/manifest.csv and its files (SPEC columns, paths relative to the CSV)."""

    def __init__(self, root: Path, pair: str) -> None:
        self.dir = root / pair
        for sub in ('moving', 'fixed', 'flow', 'valid', 'landmarks'):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.rows: list[list[str]] = []
        self.moving_written: set[int] = set()

    def add(
        self,
        index: int,
        rgb_index: int,
        rgb: Callable[[], np.ndarray],
        fixed: np.ndarray,
        flow: np.ndarray,
        valid: np.ndarray,
        points: np.ndarray,
    ) -> None:
        name = f'{self.dir.name}_{index:05d}'
        moving = f'moving/rgb_{rgb_index:05d}.png'
        if rgb_index not in self.moving_written:
            cv2.imwrite(str(self.dir / moving), cv2.cvtColor(rgb(), cv2.COLOR_RGB2BGR))
            self.moving_written.add(rgb_index)
        cv2.imwrite(str(self.dir / f'fixed/{name}.png'), fixed)
        np.save(self.dir / f'flow/{name}.npy', flow.astype(np.float32))
        cv2.imwrite(str(self.dir / f'valid/{name}.png'), valid.astype(np.uint8) * 255)
        (self.dir / f'landmarks/{name}.json').write_text(
            json.dumps(np.round(points.astype(np.float64), 3).tolist())
        )
        self.rows.append(
            [
                name,
                moving,
                f'fixed/{name}.png',
                f'flow/{name}.npy',
                f'valid/{name}.png',
                f'landmarks/{name}.json',
            ]
        )

    def close(self) -> Path:
        path = self.dir / 'manifest.csv'
        with path.open('w', newline='') as fh:
            writer = csv.writer(fh)
            writer.writerow(['name', 'moving', 'fixed', 'flow', 'valid', 'landmarks'])
            writer.writerows(self.rows)
        return path


def _write_frame(bw: BagWriter, cam: Camera, topic: str, stamp: int, img: np.ndarray, encoding: str) -> None:
    bw.write_image(topic, stamp, cam.frame_id, img, encoding)
    bw.write_camera_info(info_topic(topic), stamp, cam.frame_id, cam.K, (cam.width, cam.height))


def generate(cfg: SynthConfig, log: Callable[[str], None] | None = None) -> SynthResult:
    """Render the recording described by ``cfg`` into ``cfg.out``; return what was written and timings."""
    cfg.validate()
    started = time.perf_counter()
    scene: Scene = generate_scene(cfg.seed, cfg.duration_s)
    rig = default_rig(cfg.size_scale)
    cams = rig.cameras()
    rays = {name: cam.rays() for name, cam in cams.items()}
    timings = stream_timings(cfg, np.random.default_rng([cfg.seed, 11]))
    stamps = {
        name: frame_stamps(
            timings[name], cfg.duration_s, np.random.default_rng([cfg.seed, 12, _STREAM_CODE[name]])
        )
        for name in cams
    }
    if len(stamps['rgb']) == 0:
        raise ConfigError(
            f'duration {cfg.duration_s} s holds no RGB frame at {cfg.rgb_rate} Hz: make it longer'
        )
    events = sorted(
        (int(s), _STREAM_CODE[name], name, i) for name in cams for i, s in enumerate(stamps[name])
    )
    render_s = {name: 0.0 for name in cams}
    render_n = {name: 0 for name in cams}
    gt_s = 0.0
    rgb_views: dict[int, Geometry] = {}
    rgb_images: dict[int, np.ndarray] = {}

    def frame_rng(name: str, i: int) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, 13, _STREAM_CODE[name], i])

    def rgb_view(j: int) -> Geometry:
        if j not in rgb_views:
            t0 = time.perf_counter()
            rgb_views[j] = render_geometry(scene, rig.rgb, seconds(stamps['rgb'][j]), rays['rgb'])
            render_s['rgb'] += time.perf_counter() - t0
        return rgb_views[j]

    def rgb_image(j: int) -> np.ndarray:
        if j not in rgb_images:
            geom = rgb_view(j)
            t0 = time.perf_counter()
            rgb_images[j] = render_rgb(scene, geom, surface(scene, geom), frame_rng('rgb', j))
            render_s['rgb'] += time.perf_counter() - t0
            render_n['rgb'] += 1
        return rgb_images[j]

    exporters = {pair: _PairExporter(cfg.export_pairs, pair) for pair in PAIRS} if cfg.export_pairs else {}
    stats = {pair: PairStats() for pair in PAIRS}
    resize = {pair: resize_flow_field(cams[kind].hw, rig.rgb.hw) for pair, kind in PAIRS.items()}
    with BagWriter(cfg.out, storage=cfg.storage, overwrite=cfg.overwrite) as bw:
        for n, (stamp, _, name, i) in enumerate(events):
            cam = cams[name]
            if name == 'rgb':
                _write_frame(bw, cam, IMAGE_TOPICS['rgb'], stamp, rgb_image(i), 'rgb8')
                for j in [k for k in rgb_views if k < i]:  # later fixed frames pair with i or newer
                    rgb_views.pop(j)
                    rgb_images.pop(j, None)
                continue
            t0 = time.perf_counter()
            geom = render_geometry(scene, cam, seconds(stamp), rays[name])
            surf = surface(scene, geom)
            rng = frame_rng(name, i)
            img = render_lwir(scene, geom, surf, rng) if name == 'lwir' else render_depth(geom, surf, rng)
            render_s[name] += time.perf_counter() - t0
            render_n[name] += 1
            _write_frame(bw, cam, IMAGE_TOPICS[name], stamp, img, ENCODINGS[name])
            pair = f'rgb_{name}'
            j = nearest_index(stamps['rgb'], stamp)
            moving = rgb_view(j)
            t0 = time.perf_counter()
            flow, valid = gt_flow(scene, geom, moving)
            gt_s += time.perf_counter() - t0
            flow_topic, valid_topic = gt_topics(pair)
            bw.write_image(flow_topic, stamp, cam.frame_id, flow, '32FC2')
            bw.write_image(valid_topic, stamp, cam.frame_id, valid.astype(np.uint8) * 255, 'mono8')
            stats[pair].add(flow, valid, resize[pair])
            if pair in exporters:
                exporters[pair].add(i, j, lambda j=j: rgb_image(j), img, flow, valid, landmarks(geom, valid))
            if log is not None and (n + 1) % 30 == 0:
                log(f'  {n + 1}/{len(events)} frames rendered')
        counts = dict(bw.counts)
    for exporter in exporters.values():
        exporter.close()
    n_gt = sum(s.frames for s in stats.values())
    return SynthResult(
        path=cfg.out,
        counts=counts,
        render_ms={k: 1000 * render_s[k] / max(render_n[k], 1) for k in cams},
        gt_ms=1000 * gt_s / max(n_gt, 1),
        pairs=stats,
        elapsed_s=time.perf_counter() - started,
        rig=rig,
        scene_objects=len(scene.objects),
    )
