"""Render a synthetic rig recording into a rosbag2 bag (and optionally an image-pair manifest).

Frames are written in stamp order, as a recorder would see them. Each fixed frame (LWIR, depth) is
paired with the RGB frame nearest in stamp (``groundtruth.nearest_index``), whose geometry is rendered
on demand and cached. Runs of consecutive frames can be rendered in worker processes (``workers``):
every random draw comes from a generator seeded by ``(seed, stream, frame)`` and the scene is a pure
function of the seed, so the same seed gives the same bag content whatever the number of workers.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from nmr import atomic
from nmr.data.bag_writer import BagWriter
from nmr.domain import DEFAULT_TOPICS, PAIR_FIXED_KIND
from nmr.errors import ConfigError
from nmr.geometry.camera import CameraModel
from nmr.geometry.rig import Rig as RigModel
from nmr.synth.cameras import Rig, default_rig, random_rig
from nmr.synth.depthsensor import render_depth
from nmr.synth.groundtruth import gt_flow, landmarks, nearest_index, resize_flow_field
from nmr.synth.realsense_tf import realsense_transforms
from nmr.synth.render import Geometry, render_geometry
from nmr.synth.scene import Scene, generate_scene
from nmr.synth.shading import render_rgb, surface
from nmr.synth.thermal import render_lwir
from nmr.synth.timing import StreamTiming, frame_stamps, seconds

#: What the rig renders into (one of each camera's accepted encodings, nmr.domain).
ENCODINGS = {'rgb': 'rgb8', 'lwir': 'mono16', 'depth': '16UC1'}
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
    workers: int = 1  # processes rendering in parallel; 0 = one per CPU core (at most 4)
    rig_seed: int | None = None  # None: the default rig; else a rig drawn from this seed (random_rig)

    def validate(self) -> None:
        if not self.duration_s > 0:
            raise ConfigError(f'duration {self.duration_s} s: give a positive --duration or --frames')
        if self.workers < 0:
            raise ConfigError(f'--workers {self.workers}: use 0 (one per core) or a positive number')
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
    workers: int = 1


#: the true rig, written into every synthetic bag folder (for tests and evaluation; calibrate never reads it)
RIG_TRUE_FILE = 'rig_true.yaml'


def _write_frame(bw: BagWriter, info: CameraModel, frame_id: str, topic: str, stamp: int, img: np.ndarray,
                 encoding: str) -> None:
    bw.write_image(topic, stamp, frame_id, img, encoding)
    bw.write_camera_info(info_topic(topic), stamp, frame_id, info.K, (info.width, info.height), D=info.dist)


Event = tuple[int, int, str, int]  # (stamp, stream code, stream name, frame index)


@dataclass
class _Record:
    """One rendered frame (and, for a fixed frame, its ground truth), as a worker returns it."""

    stamp: int
    name: str
    index: int
    image: np.ndarray
    render_s: float
    rgb_index: int = -1
    flow: np.ndarray | None = None
    valid: np.ndarray | None = None
    points: np.ndarray | None = None
    gt_s: float = 0.0
    extra_rgb_s: float = 0.0  # RGB geometry rendered for this frame's GT (not cached yet)


@dataclass
class _Plan:
    """Everything a worker needs, cheap to send: the scene is regenerated from the seed."""

    cfg: SynthConfig
    stamps: dict[str, np.ndarray]


def plan(cfg: SynthConfig) -> tuple[_Plan, list[Event]]:
    """Stamps of every stream and all frames in stamp order."""
    timings = stream_timings(cfg, np.random.default_rng([cfg.seed, 11]))
    stamps = {
        name: frame_stamps(timings[name], cfg.duration_s, np.random.default_rng([cfg.seed, 12, code]))
        for name, code in _STREAM_CODE.items()
    }
    if len(stamps['rgb']) == 0:
        raise ConfigError(
            f'duration {cfg.duration_s} s holds no RGB frame at {cfg.rgb_rate} Hz: make it longer'
        )
    events = sorted(
        (int(s), _STREAM_CODE[name], name, i) for name in _STREAM_CODE for i, s in enumerate(stamps[name])
    )
    return _Plan(cfg, stamps), events


@dataclass
class _Setup:
    scene: Scene
    rig: Rig
    rays: dict[str, np.ndarray]
    offsets: dict[str, float]  # exposure = stamp + offset (the rig file's time_offset_s)
    info: dict[str, CameraModel]  # what each camera_info carries

    def true_rig(self) -> RigModel:
        return RigModel.from_synth(self.rig, self.offsets)


_SETUP_CACHE: dict[tuple[int, float, float, int | None], _Setup] = {}


def _setup(cfg: SynthConfig) -> _Setup:
    """Scene, rig and ray tables for ``cfg`` (cached: a worker renders many runs of the same scene)."""
    key = (cfg.seed, cfg.duration_s, cfg.size_scale, cfg.rig_seed)
    if key not in _SETUP_CACHE:
        _SETUP_CACHE.clear()
        if cfg.rig_seed is None:
            rig = default_rig(cfg.size_scale)
            offsets = {name: 0.0 for name in _STREAM_CODE}
            info = {name: cam.model for name, cam in rig.cameras().items()}
        else:
            drawn = random_rig(cfg.rig_seed, cfg.size_scale)
            rig = drawn.rig
            offsets = {'rgb': 0.0, 'lwir': drawn.lwir_time_offset_s, 'depth': 0.0}
            info = {name: drawn.info(name) for name in _STREAM_CODE}
        rays = {name: cam.rays() for name, cam in rig.cameras().items()}
        scene = generate_scene(cfg.seed, cfg.duration_s)
        if cfg.rig_seed is not None:  # a varying speed makes the LWIR time offset observable
            scene.motion = replace(scene.motion, speed_amp=0.6, speed_period=6.0)
        _SETUP_CACHE[key] = _Setup(scene, rig, rays, offsets, info)
    return _SETUP_CACHE[key]


def render_events(job: tuple[_Plan, list[Event]]) -> list[_Record]:
    """Render a run of consecutive frames (and the GT of the fixed ones); a pure function of ``job``."""
    pl, events = job
    cfg = pl.cfg
    setup = _setup(cfg)
    scene, rig, rays = setup.scene, setup.rig, setup.rays
    cams = rig.cameras()
    rgb_views: dict[int, Geometry] = {}

    def frame_rng(name: str, i: int) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, 13, _STREAM_CODE[name], i])

    def rgb_view(j: int) -> tuple[Geometry, float]:
        if j in rgb_views:
            return rgb_views[j], 0.0
        t0 = time.perf_counter()
        rgb_views[j] = render_geometry(scene, rig.rgb, seconds(pl.stamps['rgb'][j]), rays['rgb'])
        return rgb_views[j], time.perf_counter() - t0

    out: list[_Record] = []
    for stamp, _, name, i in events:
        t0 = time.perf_counter()
        if name == 'rgb':
            geom, _ = rgb_view(i)
            img = render_rgb(scene, geom, surface(scene, geom), frame_rng('rgb', i))
            out.append(_Record(stamp, name, i, img, time.perf_counter() - t0))
            continue
        # exposed at stamp + offset (the LWIR of a drawn rig is stamped late or early)
        geom = render_geometry(scene, cams[name], seconds(stamp) + setup.offsets[name], rays[name])
        surf = surface(scene, geom)
        rng = frame_rng(name, i)
        img = render_lwir(scene, geom, surf, rng) if name == 'lwir' else render_depth(geom, surf, rng)
        rec = _Record(stamp, name, i, img, time.perf_counter() - t0)
        rec.rgb_index = nearest_index(pl.stamps['rgb'], stamp)
        moving, rec.extra_rgb_s = rgb_view(rec.rgb_index)
        t0 = time.perf_counter()
        rec.flow, rec.valid = gt_flow(scene, geom, moving)
        rec.gt_s = time.perf_counter() - t0
        rec.points = landmarks(geom, rec.valid) if cfg.export_pairs is not None else None
        out.append(rec)
    return out


class _PairExporter:
    """Writes DIR/<pair>/manifest.csv and its files (SPEC columns, paths relative to the CSV, and
    fixed_kind: 16-bit LWIR and depth PNGs look alike, the column lets readers refuse the wrong model).

    The ``depth`` column is the depth frame of the same instant (``nmr evaluate --rig``): for rgb_depth the
    fixed image itself, for rgb_lwir the depth frame nearest in stamp (written under ``depth/``)."""

    def __init__(self, root: Path, pair: str, depth_stamps: np.ndarray | None = None) -> None:
        self.dir = root / pair
        for sub in ('moving', 'fixed', 'flow', 'valid', 'landmarks'):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.depth_stamps = depth_stamps if pair == 'rgb_lwir' else None
        if self.depth_stamps is not None:
            (self.dir / 'depth').mkdir(exist_ok=True)
        self.rows: list[list[str]] = []

    def add_depth(self, index: int, depth_mm: np.ndarray) -> None:
        if self.depth_stamps is not None:
            atomic.write_image(self.dir / f'depth/depth_{index:05d}.png', depth_mm)

    def add_moving(self, rgb_index: int, rgb: np.ndarray) -> None:
        atomic.write_image(self.dir / f'moving/rgb_{rgb_index:05d}.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def add(self, rec: _Record) -> None:
        assert rec.flow is not None and rec.valid is not None and rec.points is not None
        name = f'{self.dir.name}_{rec.index:05d}'
        atomic.write_image(self.dir / f'fixed/{name}.png', rec.image)
        atomic.save_npy(self.dir / f'flow/{name}.npy', rec.flow.astype(np.float32))
        atomic.write_image(self.dir / f'valid/{name}.png', rec.valid.astype(np.uint8) * 255)
        points = np.round(rec.points.astype(np.float64), 3).tolist()
        atomic.write_text(self.dir / f'landmarks/{name}.json', json.dumps(points))
        if self.depth_stamps is not None and len(self.depth_stamps):
            depth = f'depth/depth_{nearest_index(self.depth_stamps, rec.stamp):05d}.png'
        else:
            depth = f'fixed/{name}.png' if self.dir.name == 'rgb_depth' else ''
        self.rows.append(
            [
                name,
                f'moving/rgb_{rec.rgb_index:05d}.png',
                f'fixed/{name}.png',
                f'flow/{name}.npy',
                f'valid/{name}.png',
                f'landmarks/{name}.json',
                PAIR_FIXED_KIND[self.dir.name],
                depth,
            ]
        )

    def close(self) -> Path:
        path = self.dir / 'manifest.csv'
        with atomic.atomic_open(path, 'w', newline='') as fh:
            writer = csv.writer(fh)
            writer.writerow(['name', 'moving', 'fixed', 'flow', 'valid', 'landmarks', 'fixed_kind', 'depth'])
            writer.writerows(self.rows)
        return path


def _init_worker() -> None:
    cv2.setNumThreads(1)


def generate(cfg: SynthConfig, log: Callable[[str], None] | None = None) -> SynthResult:
    """Render the recording described by ``cfg`` into ``cfg.out``; return what was written and timings."""
    cfg.validate()
    started = time.perf_counter()
    pl, events = plan(cfg)
    setup = _setup(cfg)
    scene, rig = setup.scene, setup.rig
    cams = rig.cameras()
    chunk = 24
    jobs = [(pl, events[k : k + chunk]) for k in range(0, len(events), chunk)]
    workers = cfg.workers if cfg.workers > 0 else min(4, os.cpu_count() or 1)
    workers = max(1, min(workers, len(jobs)))
    render_s = {name: 0.0 for name in cams}
    render_n = {name: 0 for name in cams}
    gt_s = 0.0
    exporters = ({pair: _PairExporter(cfg.export_pairs, pair, pl.stamps['depth']) for pair in PAIR_FIXED_KIND}
                 if cfg.export_pairs else {})
    needed_rgb = {nearest_index(pl.stamps['rgb'], int(s)) for kind in PAIR_FIXED_KIND.values() for s in pl.stamps[kind]}
    stats = {pair: PairStats() for pair in PAIR_FIXED_KIND}
    resize = {pair: resize_flow_field(cams[kind].hw, rig.rgb.hw) for pair, kind in PAIR_FIXED_KIND.items()}
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=get_context('spawn'), initializer=_init_worker)
    try:
        with BagWriter(cfg.out, storage=cfg.storage, overwrite=cfg.overwrite) as bw:
            # the RealSense driver's factory depth-colour extrinsics, latched, before the first frame
            bw.write_tf_static(events[0][0], realsense_transforms(
                cams['rgb'].frame_id, cams['depth'].frame_id, setup.true_rig().pose('depth')))
            results = pool.map(render_events, jobs) if pool is not None else map(render_events, jobs)
            done = 0
            for records in results:
                for rec in records:
                    cam = cams[rec.name]
                    _write_frame(bw, setup.info[rec.name], cam.frame_id, DEFAULT_TOPICS[rec.name], rec.stamp,
                                 rec.image, ENCODINGS[rec.name])
                    render_s[rec.name] += rec.render_s
                    render_n[rec.name] += 1
                    render_s['rgb'] += rec.extra_rgb_s
                    if rec.name == 'rgb':
                        if rec.index in needed_rgb:
                            for exporter in exporters.values():
                                exporter.add_moving(rec.index, rec.image)
                        continue
                    assert rec.flow is not None and rec.valid is not None
                    if rec.name == 'depth' and 'rgb_lwir' in exporters:
                        exporters['rgb_lwir'].add_depth(rec.index, rec.image)
                    pair = f'rgb_{rec.name}'
                    flow_topic, valid_topic = gt_topics(pair)
                    bw.write_image(flow_topic, rec.stamp, cam.frame_id, rec.flow, '32FC2')
                    bw.write_image(
                        valid_topic, rec.stamp, cam.frame_id, rec.valid.astype(np.uint8) * 255, 'mono8'
                    )
                    stats[pair].add(rec.flow, rec.valid, resize[pair])
                    gt_s += rec.gt_s
                    if pair in exporters:
                        exporters[pair].add(rec)
                done += len(records)
                if log is not None and len(jobs) > 1:
                    log(f'  {done}/{len(events)} frames rendered')
            counts = dict(bw.counts)
            bw.set_custom_data('nmr.rig_true', setup.true_rig().dumps())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    setup.true_rig().save(cfg.out / RIG_TRUE_FILE)
    for exporter in exporters.values():
        exporter.close()
    if cfg.export_pairs is not None:  # the true geometry, for `nmr evaluate --rig` (calibration never reads it)
        setup.true_rig().save(cfg.export_pairs / 'rig_true.yaml')  # the same file as the bag's, time offsets too
    n_gt = sum(st.frames for st in stats.values())
    return SynthResult(
        path=cfg.out,
        counts=counts,
        render_ms={k: 1000 * render_s[k] / max(render_n[k], 1) for k in cams},
        gt_ms=1000 * gt_s / max(n_gt, 1),
        pairs=stats,
        elapsed_s=time.perf_counter() - started,
        rig=rig,
        scene_objects=len(scene.objects),
        workers=workers,
    )
