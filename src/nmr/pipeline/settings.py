"""The register node's settings: ONE table of parameters, shared by `register_node` and `nmr register-bag`.

Why here and not in `nmr.ros`: `nmr register-bag` must apply the node's processing offline without
importing rclpy, so the table, its defaults, its validation and the ROS-params-file reader live in the
pipeline layer; `nmr.ros.params` only declares these same entries as ROS parameters.

Parameter names are flat, dot-separated ROS parameter names (nested maps in the YAML file).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nmr.domain import (
    BACKEND_CHOICES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_TOPICS,
    PAIR_FIXED_KIND,
    PAIRS,
    REFINE_TILES_PAIRS,
    STREAMS,
    TRANSPORTS,
)
from nmr.errors import ConfigError
from nmr.resources import share_dirs, share_path

if TYPE_CHECKING:
    from nmr.geometry.registration import GeometricStage
    from nmr.inference.protocol import RegistrarProtocol
    from nmr.pipeline.outputs import PairProcessor

PAIR_OUTPUTS: tuple[str, ...] = ('registered', 'flow', 'flow_viz', 'overlay')
ALL_PAIR_OUTPUTS: tuple[str, ...] = (*PAIR_OUTPUTS, 'valid')
"""`valid` (mono8, 255 where the flow is trusted) is not in the default list; with a rig it is always added."""
OUTPUTS: tuple[str, ...] = (*PAIR_OUTPUTS, 'fused')
OUTPUT_CHOICES: tuple[str, ...] = (*ALL_PAIR_OUTPUTS, 'fused')
RELIABILITY: tuple[str, ...] = ('best_available', 'reliable', 'best_effort')


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default (its type is the parameter's type), description and a check."""

    name: str
    default: Any
    description: str
    check: Callable[[Any], str | None] = lambda _v: None  # returns a problem description or None
    dynamic: bool = False
    """Settable at run time (`ros2 param set`); the others are read-only: a set is refused."""

    @property
    def kind(self) -> type:
        return type(self.default) if not isinstance(self.default, list) else list


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f'must be one of {", ".join(choices)}'


def _subset_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(values: Any) -> str | None:
        bad = [v for v in values if v not in choices]
        if bad:
            return f'unknown entries {bad}; allowed: {", ".join(choices)}'
        if len(set(values)) != len(values):
            return 'has duplicate entries'
        return None

    return check


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if math.isfinite(v) and v >= low else f'must be >= {low}'


def _positive(v: Any) -> str | None:
    return None if math.isfinite(v) and v > 0 else 'must be > 0'


def _unit(v: Any) -> str | None:
    return None if 0.0 <= v <= 1.0 else 'must be between 0 and 1'


def _topic(v: Any) -> str | None:
    if not v or any(c.isspace() for c in v):
        return 'must be a non-empty topic name without spaces'
    return None


def _device(v: Any) -> str | None:
    if v in ('auto', 'cpu', 'cuda') or (v.startswith('cuda:') and v[5:].isdigit()):
        return None
    return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"


PARAMS: tuple[ParamSpec, ...] = (
    *(ParamSpec(f'topics.{s}', DEFAULT_TOPICS[s], f'{s} image topic (sensor_msgs/Image)', _topic)
      for s in STREAMS),
    *(ParamSpec(f'transport.{s}', 'raw', f"{s} transport: raw (sensor_msgs/Image) or compressed "
                f"(CompressedImage on <topic>/compressed{', compressedDepth' if s == 'depth' else ''})",
                _one_of(TRANSPORTS[s])) for s in STREAMS),
    *(ParamSpec(f'max_pixels.{s}', DEFAULT_MAX_PIXELS, f'largest {s} image accepted (width x height); larger '
                'ones are refused before decoding (a compressed one from its PNG/JPEG header)', _at_least(1))
      for s in STREAMS),
    *(ParamSpec(f'qos.{s}.reliability', 'best_available',
                f'{s} subscription reliability: best_available (what the publishers offer), reliable or '
                'best_effort', _one_of(RELIABILITY)) for s in STREAMS),
    *(ParamSpec(f'qos.{s}.history_depth', 10, f'{s} subscription queue depth (beyond it a reliable reader drops '
                'the oldest frames while the node is busy)', _at_least(1))
      for s in STREAMS),
    ParamSpec('pairs', list(PAIRS), 'pairs to run', _subset_of(PAIRS)),
    *(ParamSpec(f'models.{p}', '', f"model file for {p} (.onnx/.pt; '' = share/nmr/models/{p}.onnx or "
                ".pt; .pt for backend torch)", dynamic=True) for p in PAIRS),
    ParamSpec('backend', 'auto', 'inference backend', _one_of(BACKEND_CHOICES), dynamic=True),
    ParamSpec('device', 'auto', 'inference device: auto, cpu, cuda or cuda:N', _device, dynamic=True),
    ParamSpec('net_height', 0, "network input height (0 = the model's training size)", _at_least(0),
              dynamic=True),
    ParamSpec('net_width', 0, "network input width (0 = the model's training size)", _at_least(0),
              dynamic=True),
    *(ParamSpec(f'refine_tiles.{p}', p in REFINE_TILES_PAIRS, f"refine {p}'s network flow on 2x2 overlapping tiles "
                'of the pre-warped pair (nmr.inference.tiles: 5 network passes instead of 1; on by default where '
                'it measured better for the shipped model, docs/results.md)', dynamic=True) for p in PAIRS),
    ParamSpec('sync.slop_s', 0.02, 'max stamp difference within a synchronised pair [s]', _positive),
    ParamSpec('sync.queue_size', 10, 'messages kept per stream while waiting for a partner', _at_least(1)),
    ParamSpec('outputs', list(OUTPUTS), 'outputs to publish (also: valid; added by itself with a rig)',
              _subset_of(OUTPUT_CHOICES), dynamic=True),
    ParamSpec('rig', '', "rig file (RIG.yaml, config/rig.example.yaml): register through the depth camera's depth "
              "(geometric flow, then the network's residual); '' = off (network only)"),
    ParamSpec('residual', False, 'with a rig: also run the network on the geometrically pre-warped pair and '
              'compose its residual (false, the default: geometry only, no network; the shipped models, and '
              'residual models trained for it (scripts/train_residual.sh), made it worse on the synthetic rig, '
              'docs/results.md)'),
    ParamSpec('rig_plane_distance_m', 10.0, 'with a rig, a set without depth uses a plane this far in front of '
              'the fixed camera [m]', _positive),
    ParamSpec('rig_motion', True, 'with a rig: compensate the motion between the LWIR exposure and its RGB frame '
              'with the optical flow from the previous RGB frame (the streams are not triggered together)'),
    ParamSpec('rig_depth_max_age_s', 0.05, 'with a rig, the depth frame of an rgb_lwir set must be at most this '
              'far from the LWIR frame (stamps on the RGB clock) [s]; else the plane model is used', _positive),
    ParamSpec('overlay_alpha', 0.5, 'weight of the registered image in P/overlay', _unit, dynamic=True),
    ParamSpec('flow_viz_max_px', 0.0, 'flow magnitude at full colour (0 = per frame)', _at_least(0),
              dynamic=True),
    ParamSpec('viz_max_rate_hz', 10.0, 'at most this many flow_viz and overlay images per second and pair, by '
              'header stamp (0 = every set); they are for people, and cost ~1/3 of a set at full rate',
              _at_least(0), dynamic=True),
    ParamSpec('viz_scale', 1.0, 'flow_viz computed at this fraction of the fixed size and resized back '
              '(1 = full size)', lambda v: None if 0.05 <= v <= 1.0 else 'must be between 0.05 and 1',
              dynamic=True),
    ParamSpec('inference_threads', 0, 'CPU threads per pair for the network (ONNX Runtime intra-op, torch); '
              '0 = usable cores / pairs, since the pairs run in parallel', _at_least(0)),
    ParamSpec('diagnostics_period_s', 1.0, 'period of /diagnostics messages [s]', _positive),
    ParamSpec('log_throttle_s', 5.0, 'minimum interval between repeated warnings [s]', _at_least(0),
              dynamic=True),
    ParamSpec('input_timeout_s', 3.0, 'an input silent this long is reported as stopped [s]', _positive,
              dynamic=True),
    ParamSpec('input_wait_s', 10.0, 'an input that has had no message this long since start is logged as '
              'missing, with the topics of its type that exist (a misspelled topic) [s]', _positive, dynamic=True),
    ParamSpec('model_retry_s', 5.0, 'how often a missing or broken model file is looked at again [s]',
              _positive, dynamic=True),
)
PARAMS_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class InputSettings:
    """One input stream: its topic and subscription QoS."""

    topic: str
    reliability: str = 'best_available'
    history_depth: int = 10
    transport: str = 'raw'
    max_pixels: int = DEFAULT_MAX_PIXELS

    @property
    def subscribed_topic(self) -> str:
        """The topic actually subscribed: `topic` for raw images, `topic/<transport>` otherwise."""
        return self.topic if self.transport == 'raw' else f"{self.topic.rstrip('/')}/{self.transport}"

    @property
    def camera_info_topic(self) -> str:
        return camera_info_topic(self.topic)


def camera_info_topic(image_topic: str) -> str:
    """`camera_info` beside an image topic: image_transport's rule (replace the last name), so
    `/camera/camera/depth/image_rect_raw` -> `/camera/camera/depth/camera_info`."""
    head = image_topic.rstrip('/').rpartition('/')[0]
    return f'{head}/camera_info'


@dataclass(frozen=True)
class NodeSettings:
    """Validated settings of the register node (and of `nmr register-bag`)."""

    inputs: dict[str, InputSettings]
    pairs: tuple[str, ...]
    models: dict[str, str]
    backend: str = 'auto'
    device: str = 'auto'
    net_hw: tuple[int, int] | None = None
    sync_slop_ns: int = 20_000_000
    sync_queue_size: int = 10
    outputs: tuple[str, ...] = OUTPUTS
    overlay_alpha: float = 0.5
    flow_viz_max_px: float | None = None
    viz_max_rate_hz: float = 10.0
    viz_scale: float = 1.0
    inference_threads: int = 0
    diagnostics_period_s: float = 1.0
    log_throttle_s: float = 5.0
    input_timeout_s: float = 3.0
    input_wait_s: float = 10.0
    model_retry_s: float = 5.0
    rig: str = ''
    residual: bool = False
    refine_tiles: tuple[str, ...] = REFINE_TILES_PAIRS
    rig_plane_distance_m: float = 10.0
    rig_motion: bool = True
    rig_depth_max_age_ns: int = 50_000_000
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def pair_outputs(self) -> tuple[str, ...]:
        return tuple(o for o in self.outputs if o in ALL_PAIR_OUTPUTS)

    @property
    def needs_model(self) -> bool:
        """The network runs (no rig, or a rig with the residual on)."""
        return not self.rig or self.residual

    @property
    def fused(self) -> bool:
        return 'fused' in self.outputs and all(p in self.pairs for p in PAIRS)


def defaults() -> dict[str, Any]:
    """Every parameter's default value (lists copied)."""
    return {p.name: list(p.default) if isinstance(p.default, list) else p.default for p in PARAMS}


def _coerce(spec: ParamSpec, value: Any) -> Any:
    """Value in the parameter's type, or ConfigError naming the parameter."""
    want = spec.kind
    if value is None:  # rclpy reports an empty YAML list ([]) as a parameter without value
        raise ConfigError(f"parameter '{spec.name}' is empty or has no value: expected {_type_name(spec)}")
    bad = ConfigError(f"parameter '{spec.name}': expected {_type_name(spec)}, got {value!r}")
    if want is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if want is str:
        if not isinstance(value, str):
            raise bad
        return value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise bad
    return list(value)


def _type_name(spec: ParamSpec) -> str:
    names = {bool: 'a boolean', int: 'an integer', float: 'a number', str: 'a string',
             list: 'a list of strings'}
    return names[spec.kind]


def validate(values: Mapping[str, Any]) -> NodeSettings:
    """Check every value (types, ranges, choices); unknown names are errors. Raises ConfigError."""
    unknown = sorted(set(values) - set(PARAMS_BY_NAME))
    if unknown:
        raise ConfigError(f"unknown parameter '{unknown[0]}' (known: see config/register.yaml)")
    merged = defaults()
    for name, value in values.items():
        spec = PARAMS_BY_NAME[name]
        value = _coerce(spec, value)
        problem = spec.check(value)
        if problem:
            raise ConfigError(f"parameter '{name}' = {value!r}: {problem}")
        merged[name] = value
    if not merged['pairs']:
        raise ConfigError(f"parameter 'pairs' is empty: list at least one of {', '.join(PAIRS)}")
    if (merged['net_height'] == 0) != (merged['net_width'] == 0):
        raise ConfigError("parameters 'net_height' and 'net_width' must both be 0 (model's size) or both > 0")
    inputs = {s: InputSettings(merged[f'topics.{s}'], merged[f'qos.{s}.reliability'],
                               merged[f'qos.{s}.history_depth'], merged[f'transport.{s}'],
                               merged[f'max_pixels.{s}']) for s in STREAMS}
    used = {'rgb', *(PAIR_FIXED_KIND[p] for p in merged['pairs'])}
    topics = [inputs[s].topic for s in STREAMS if s in used]
    if len(set(topics)) != len(topics):
        raise ConfigError(f'parameters topics.*: two inputs share one topic ({topics}); give each its own')
    net_hw = (merged['net_height'], merged['net_width']) if merged['net_height'] else None
    return NodeSettings(
        inputs=inputs,
        pairs=tuple(merged['pairs']),
        models={p: merged[f'models.{p}'] for p in PAIRS},
        backend=merged['backend'],
        device=merged['device'],
        net_hw=net_hw,
        sync_slop_ns=round(merged['sync.slop_s'] * 1e9),
        sync_queue_size=merged['sync.queue_size'],
        outputs=tuple(merged['outputs']) + (('valid',) if merged['rig'] and 'valid' not in merged['outputs'] else ()),
        overlay_alpha=merged['overlay_alpha'],
        flow_viz_max_px=merged['flow_viz_max_px'] or None,
        viz_max_rate_hz=merged['viz_max_rate_hz'],
        viz_scale=merged['viz_scale'],
        inference_threads=merged['inference_threads'],
        diagnostics_period_s=merged['diagnostics_period_s'],
        log_throttle_s=merged['log_throttle_s'],
        input_timeout_s=merged['input_timeout_s'],
        input_wait_s=merged['input_wait_s'],
        model_retry_s=merged['model_retry_s'],
        rig=merged['rig'],
        residual=merged['residual'],
        refine_tiles=tuple(p for p in PAIRS if merged[f'refine_tiles.{p}']),
        rig_plane_distance_m=merged['rig_plane_distance_m'],
        rig_motion=merged['rig_motion'],
        rig_depth_max_age_ns=round(merged['rig_depth_max_age_s'] * 1e9),
        values=merged,
    )


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + '.'))
        else:
            flat[name] = value
    return flat


def read_params_file(path: str | Path, node_name: str = 'register_node') -> dict[str, Any]:
    """Flat parameter values for `node_name` from a ROS 2 parameters YAML file.

    Entries under `/**`, `<node_name>` or `/<namespace>/<node_name>` apply (later ones win), as for
    `--ros-args --params-file`.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f'parameters file {path} does not exist') from None
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f'parameters file {path} cannot be read: {str(err).splitlines()[0]}') from None
    if not isinstance(doc, Mapping):
        raise ConfigError(f'parameters file {path}: expected a map of node names to ros__parameters')
    values: dict[str, Any] = {}
    for key, section in doc.items():
        key = str(key)
        applies = key in ('/**', '**', node_name) or key.rstrip('/').split('/')[-1] == node_name
        if not applies:
            continue
        if not isinstance(section, Mapping) or not isinstance(section.get('ros__parameters'), Mapping):
            raise ConfigError(f"parameters file {path}: section '{key}' has no 'ros__parameters' map")
        values.update(_flatten(section['ros__parameters']))
    values.pop('use_sim_time', None)
    return values


MODEL_SUFFIXES: dict[str, tuple[str, ...]] = {
    'auto': ('.onnx', '.pt'),
    'onnxruntime': ('.onnx', '.pt'),
    'tensorrt': ('.onnx', '.pt'),
    'torch': ('.pt',),
}
"""Default model files per backend, preferred first. The torch backend runs only checkpoints, so it must
never be handed the .onnx file that the other backends prefer (that left both pairs idle)."""


def default_model_path(pair: str, backend: str = 'auto') -> Path:
    """share/nmr/models/<pair>.<ext> for the first extension `backend` runs; in a checkout, <repo>/models/.

    Returns the backend's preferred path when none exists, so the error message names that file.
    """
    suffixes = MODEL_SUFFIXES.get(backend, MODEL_SUFFIXES['auto'])
    dirs = [d / 'models' for d in share_dirs()] or [share_path('models')]
    for folder in dirs:
        for ext in suffixes:
            candidate = folder / f'{pair}{ext}'
            if candidate.is_file():
                return candidate
    return dirs[0] / f'{pair}{suffixes[0]}'


def model_path(settings: NodeSettings, pair: str) -> Path:
    """The configured model for `pair`, or its default location."""
    configured = settings.models.get(pair, '')
    return Path(configured).expanduser() if configured else default_model_path(pair, settings.backend)


def inference_threads(settings: NodeSettings, parallel: int) -> int:
    """Network threads per pair: the setting, or the usable cores shared by `parallel` pairs."""
    if settings.inference_threads > 0:
        return settings.inference_threads
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, parallel))


def configure_threads(settings: NodeSettings, parallel: int) -> int:
    """Set torch's and OpenCV's process-wide threads for `parallel` pairs running at once; returns the count.

    Both counts are process-wide and each calling thread gets its own team (torch) or competes for the
    pool (OpenCV), so two workers with the default (all cores each) would run 2 x cores threads on the
    cores; with cores / pairs each, every worker owns its share. Called once, before any worker.
    """
    import cv2
    import torch

    threads = inference_threads(settings, parallel)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


def create_registrar(path: Path, settings: NodeSettings, pair: str,
                     log: Callable[[str], None], parallel: int = 1) -> RegistrarProtocol:
    """nmr.inference.create_registrar with the settings' backend, device and network size for `pair`.

    `parallel`: how many pairs run at once (the node: all of them; register-bag: one), which sets the
    ONNX Runtime threads per session (`inference_threads`). Refuses (ModelFileError) a model trained for
    another pair. Imported here, not at the top: the inference layer loads torch, which
    `nmr register-bag --help` does not need.
    """
    from nmr.inference.select import create_registrar as create

    threads = inference_threads(settings, parallel)
    registrar = create(path, backend=settings.backend, device=settings.device, net_hw=settings.net_hw, log=log,
                       expected_pair=pair, threads=threads)
    if parallel > 1 and getattr(registrar, 'prepost_threads', None) is not None:
        registrar.prepost_threads = threads  # type: ignore[attr-defined]  # = torch's count: no switching
    if pair in settings.refine_tiles:
        from nmr.inference.tiles import TileRefinedRegistrar

        return TileRefinedRegistrar(registrar)
    return registrar


def make_processor(registrar: RegistrarProtocol | None, pair: str, settings: NodeSettings,
                   geometry: GeometricStage | None = None) -> PairProcessor:
    """The PairProcessor of `pair` with the settings' output options (node and register-bag alike);
    `geometry`: the rig's stage (load_geometry) when a rig is set."""
    from nmr.pipeline.outputs import PairProcessor

    return PairProcessor(registrar, pair, settings.overlay_alpha, settings.flow_viz_max_px,
                         settings.viz_max_rate_hz, settings.viz_scale, geometry=geometry,
                         residual=settings.residual)


def load_geometry(settings: NodeSettings, log: Callable[[str], None]) -> GeometricStage | None:
    """The geometric stage of the settings' rig file (None without one); ConfigError for a bad rig file or a
    rig that has the camera of none of the configured pairs. A pair whose camera the rig lacks is registered
    by its network (said once here)."""
    if not settings.rig:
        return None
    from nmr.geometry.registration import GeometricStage
    from nmr.geometry.rig import Rig

    rig = Rig.load(Path(settings.rig).expanduser())
    stage = GeometricStage(rig, settings.rig_plane_distance_m, log=log, motion=settings.rig_motion)
    if not any(stage.covers(pair) for pair in settings.pairs):
        stage.check_pairs(settings.pairs)  # raises, naming the first missing camera
    for pair in settings.pairs:
        if not stage.covers(pair):
            log(f'rig file {settings.rig} has no {pair.split("_", 1)[1]} camera: {pair} is registered by its '
                f'network (models.{pair}), the other pairs through the rig')
    return stage


def geometry_for(geometry: GeometricStage | None, pair: str) -> GeometricStage | None:
    """The rig's stage for `pair`, or None when there is no rig or it lacks the pair's camera."""
    return geometry if geometry is not None and geometry.covers(pair) else None
