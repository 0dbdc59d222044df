"""`register_node`: live RGB/LWIR/depth registration (subscribe -> synchronise -> R_Phi -> publish).

The node is the ROS adapter of nmr.pipeline.core.FrameSetCore (`nmr register-bag` is the bag adapter):
the core owns synchronisation, time-jump handling, the drop-stale policy and fused pairing; the node turns
messages into frames, and registrations into messages, diagnostics and logs.

Threads (chosen on purpose, see docs/performance.md): a SingleThreadedExecutor runs the subscription
callbacks, which only decode headers/arrays and add the frame to the core (keep='newest': one pending set
per pair, a newer set makes a waiting one stale); they are short, so one executor thread is enough and a
MultiThreadedExecutor would only add GIL hand-overs. One worker thread PER PAIR takes that pair's newest
set and runs its stages (nmr.pipeline.outputs: prior, network, flow, warp, outputs), then publishes; the
pairs run in parallel on two cores because ONNX Runtime, OpenCV, numpy and torch release the GIL. Each
ONNX Runtime session then gets cores / pairs intra-op threads (`inference_threads`, 0 = that), and torch
and OpenCV as many, so two pairs never oversubscribe two cores. The worker of the pair that finishes
a set second makes the fused output. Nothing queues up.

Inputs: raw `sensor_msgs/Image` or, per input (`transport.<s>`), `CompressedImage` on `<topic>/compressed`
or `/compressedDepth`. Reliability `best_available` by default: a best-effort driver that appears after
the subscription was made reliable raises an incompatible-QoS event and the subscription is re-made best
effort (see nmr.ros.qos). Each fixed camera's `camera_info` (beside its image topic) is re-published as
`<pair>/camera_info` with each output set, since the outputs are on the fixed camera's grid.

Parameters: the table's dynamic ones (models, backend, outputs, overlay alpha, ...) can be set at run time
and are validated first; the others are read-only (see nmr.ros.params).

Shutdown: the first SIGINT/SIGTERM stops the executor (rclpy's handler); later ones, which arrive while the
node cleans up when a terminal's Ctrl-C reaches the whole process group and `ros2 launch` forwards its own,
are ignored, so clean-up finishes and the exit code is 0.

Lazy: a pair is only computed when one of its outputs (or the fused output) has subscribers.
Robustness: every problem caused by inputs, parameters or model files is a throttled one-line log; the
node keeps running and recovers (a model file that appears or changes later is loaded then). The first
load happens in the constructor, before the node advertises any topic, so that being discovered means
being ready.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSPolicyKind, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from nmr.data.compressed import decode_compressed
from nmr.domain import PAIR_FIXED_KIND, PAIRS, STREAM_ENCODINGS
from nmr.errors import ConfigError, NmrUserError
from nmr.pipeline.core import Added, Frame, FrameSetCore, PairSet
from nmr.pipeline.fused import FUSED_TOPICS
from nmr.pipeline.geometric import core_rig_options
from nmr.pipeline.outputs import NonFiniteFlowError, PairProcessor
from nmr.pipeline.settings import (
    NodeSettings,
    camera_info_topic,
    configure_threads,
    create_registrar,
    geometry_for,
    load_geometry,
    make_processor,
    model_path,
)
from nmr.ros.convert import copy_header, from_image_msg, header_stamp_ns, to_image_msg
from nmr.ros.diagnostics import (
    CLOCK_MISMATCH_S,
    ERROR,
    OK,
    WARN,
    PairStats,
    StreamStats,
    Throttle,
    diagnostic_array,
    pair_status,
    stream_status,
)
from nmr.ros.node_usage import HELP_FLAGS, argument_problem, non_ros_arguments, usage_text
from nmr.ros.params import declare_and_load, updated_settings
from nmr.ros.qos import camera_info_qos, input_qos, output_qos

NODE_NAME = 'register_node'
CAMERA_INFO = 'camera_info'


@dataclass
class PairRuntime:
    """What the node keeps per pair beside the core's state: model, publishers, diagnostics."""

    name: str
    fixed_stream: str
    stats: PairStats = field(default_factory=PairStats)
    publishers: dict[str, Any] = field(default_factory=dict)
    """output name -> publisher; replaced as a whole (under the node's `_pub_lock`) when `outputs` change."""
    info_publisher: Any = None
    processor: PairProcessor | None = None
    model_file: Path | None = None
    model_stamp: tuple[float, int] | None = None   # (mtime, size) of the file last tried
    model_checked: float = -1e9
    backend: str = '-'
    device: str = '-'


def _restamped(info: CameraInfo, header: Header) -> CameraInfo:
    """The camera's calibration with an output's header (same stamp and frame as the images)."""
    out = CameraInfo()
    for name in ('height', 'width', 'distortion_model', 'd', 'k', 'r', 'p', 'binning_x', 'binning_y', 'roi'):
        setattr(out, name, getattr(info, name))
    out.header = copy_header(header)
    return out


def _file_stamp(path: Path) -> tuple[float, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_size)


class RegisterNode(Node):
    """The node; construction raises ConfigError (one line) for invalid parameters."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings: NodeSettings = declare_and_load(self)
        s = self.settings
        self._throttle = Throttle(s.log_throttle_s)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        # the rig (parameter `rig`): geometric flow through depth before the network (or instead of it)
        self.geometry = load_geometry(s, log=self._log_rig)
        self.core = FrameSetCore(s.pairs, s.sync_slop_ns, s.sync_queue_size, keep='newest',
                                 **core_rig_options(self.geometry, s))
        self.pairs: dict[str, PairRuntime] = {p: PairRuntime(p, PAIR_FIXED_KIND[p]) for p in s.pairs}
        used = list(self.core.streams)
        self.streams: dict[str, StreamStats] = {n: StreamStats(s.inputs[n].topic) for n in used}
        self._camera_info: dict[str, CameraInfo] = {}
        self._pub_lock = threading.Lock()  # the worker publishes while a parameter change swaps publishers
        # Load the models before any publisher or subscription exists: a peer that discovers the node
        # (a player waiting for subscribers, a recorder waiting for outputs) must find it able to compute.
        # Loaded lazily in the worker, the first seconds of input (the whole first second of a demo bag)
        # were synchronised and dropped as stale while onnxruntime/torch were still being imported.
        configure_threads(s, len(self.pairs))  # torch, OpenCV: cores / pairs threads per worker
        self._check_models()
        self._create_outputs()
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._create_inputs(used)
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self._diag_timer = self.create_timer(s.diagnostics_period_s, self._publish_diagnostics)
        # Wall (steady) time: with use_sim_time and no /clock yet, a node-clock timer would never fire.
        self._started = time.monotonic()
        self._missing_timer = self.create_timer(1.0, self._report_missing_inputs,
                                                clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._workers: list[threading.Thread] = []
        self.start_workers()
        self.get_logger().info(
            f'pairs {", ".join(s.pairs)}; inputs '
            + ', '.join(f'{n}={self._subs[n].topic_name} ({s.inputs[n].transport})' for n in used)
            + '; camera_info ' + ', '.join(f'{n}={sub.topic_name}' for n, sub in self._info_subs.items())
            + f'; outputs {", ".join(s.outputs)} under {self.get_namespace()}')

    # -- subscriptions and publishers ------------------------------------------------------------
    def _create_outputs(self) -> None:
        """Image publishers per the `outputs` setting, and camera_info beside them (always advertised)."""
        self._out_qos = output_qos()
        self.fused_publishers: dict[str, Any] = {}
        self._update_publishers()
        for pair in self.pairs.values():
            pair.info_publisher = self.create_publisher(CameraInfo, f'{pair.name}/{CAMERA_INFO}', self._out_qos)
        both = all(p in self.pairs for p in PAIRS)  # fused outputs possible (also after `outputs` is set)
        self._fused_info_pub = self.create_publisher(CameraInfo, f'fused/{CAMERA_INFO}', self._out_qos) \
            if both else None

    def _create_inputs(self, used: list[str]) -> None:
        """Image subscriptions of the used streams and camera_info of their fixed cameras."""
        self._subs: dict[str, Any] = {}
        self._sub_reliability: dict[str, str] = {}
        self._info_subs: dict[str, Any] = {}
        for n in used:
            self._subscribe(n)
        for n in used:
            if n != 'rgb':
                self._subscribe_camera_info(n)

    def _subscribe_camera_info(self, stream: str, reliability: str | None = None) -> None:
        """(Re)create the camera_info subscription of a fixed camera (beside its image topic).

        Same reliability matching as the images (qos.<s>.reliability): a best-effort publisher that appears
        after a best_available subscription was made reliable (`nmr play` started after the node) is
        followed; before, nothing arrived and `<pair>/camera_info` never came out.
        """

        def callback(msg: CameraInfo) -> None:
            self._on_camera_info(stream, msg)

        def on_incompatible(event: QoSRequestedIncompatibleQoSInfo) -> None:
            self._on_incompatible_qos(stream, event, camera_info=True)

        old = self._info_subs.pop(stream, None)
        if old is not None:
            self.destroy_subscription(old)
        chosen = reliability or self.settings.inputs[stream].reliability
        self._info_subs[stream] = self.create_subscription(
            CameraInfo, self._info_topic(stream), callback, camera_info_qos(chosen),
            event_callbacks=SubscriptionEventCallbacks(incompatible_qos=on_incompatible))

    def _subscribe(self, stream: str, reliability: str | None = None) -> None:
        """(Re)create the input subscription of `stream` (raw Image or CompressedImage per `transport`)."""
        settings = self.settings.inputs[stream]
        msg_type = Image if settings.transport == 'raw' else CompressedImage

        def on_incompatible(event: QoSRequestedIncompatibleQoSInfo) -> None:
            self._on_incompatible_qos(stream, event)

        def on_image(msg: Image | CompressedImage) -> None:
            self._on_image(stream, msg)

        events = SubscriptionEventCallbacks(incompatible_qos=on_incompatible)
        old = self._subs.pop(stream, None)
        if old is not None:
            self.destroy_subscription(old)
        self._sub_reliability[stream] = reliability or settings.reliability
        self._subs[stream] = self.create_subscription(
            msg_type, settings.subscribed_topic, on_image, input_qos(settings, reliability),
            event_callbacks=events)
        self.streams[stream].topic = self._subs[stream].topic_name  # diagnostics name it as remapped

    def _info_topic(self, stream: str) -> str:
        """camera_info beside the image topic as subscribed (after remapping), compressed suffix removed."""
        resolved = self._subs[stream].topic_name
        if self.settings.inputs[stream].transport != 'raw':
            resolved = resolved.rpartition('/')[0]
        return camera_info_topic(resolved)

    def _on_incompatible_qos(self, stream: str, event: QoSRequestedIncompatibleQoSInfo,
                             camera_info: bool = False) -> None:
        """A publisher on an input (or its camera_info) cannot reach the subscription; with best_available,
        follow it."""
        if event.last_policy_kind != QoSPolicyKind.RELIABILITY:
            return
        sub = self._info_subs[stream] if camera_info else self._subs[stream]
        topic = sub.topic_name
        if self.settings.inputs[stream].reliability == 'best_available':
            if sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT:
                return  # already followed (a late event of the subscription it replaced)
            self.get_logger().info(f'topic {topic}: a best-effort publisher appeared after the subscription '
                                   'was made reliable; subscribing best effort (set qos.'
                                   f'{stream}.reliability to pin it)')
            if camera_info:
                self._subscribe_camera_info(stream, 'best_effort')
            else:
                self._subscribe(stream, 'best_effort')
            return
        self._warn(f'qos:{stream}', f'topic {topic}: a best-effort publisher cannot reach this reliable '
                   f'subscription: set qos.{stream}.reliability to best_available or best_effort')

    def _update_publishers(self) -> None:
        """Publishers for exactly the outputs in the settings (kept where they already exist)."""
        s = self.settings
        with self._pub_lock:
            for pair in self.pairs.values():
                keep = {o: pair.publishers.get(o) or self.create_publisher(Image, f'{pair.name}/{o}', self._out_qos)
                        for o in s.pair_outputs}
                self._destroy_unused(pair.publishers, keep)
                pair.publishers = keep
            fused = {t: self.fused_publishers.get(t) or self.create_publisher(Image, t, self._out_qos)
                     for t in FUSED_TOPICS if s.fused}
            self._destroy_unused(self.fused_publishers, fused)
            self.fused_publishers = fused

    def _destroy_unused(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        for name, pub in old.items():
            if name not in new:
                self.destroy_publisher(pub)

    # -- parameters --------------------------------------------------------------------------------
    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate a run-time set (read-only ones were refused by rclpy already); nothing changes yet."""
        try:
            updated_settings(self.settings, params)
        except ConfigError as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params: list[Parameter]) -> None:
        """Apply an accepted set: reload models, rebuild publishers, update the outputs' look."""
        try:
            new = updated_settings(self.settings, params)
        except ConfigError as err:  # valid a moment ago (a model file removed since): keep the old settings
            self._warn('params', f'parameters not applied: {err}', error=True)
            return
        if new is None:
            return
        old, self.settings = self.settings, new
        self._throttle.period_s = new.log_throttle_s
        runtime = ('backend', 'device', 'net_hw', 'refine_tiles')
        for pair in self.pairs.values():
            if (model_path(old, pair.name) != model_path(new, pair.name)
                    or any(getattr(old, a) != getattr(new, a) for a in runtime)):
                pair.model_file, pair.model_checked = None, -1e9  # the worker loads it on its next round
            if pair.processor is not None:
                pair.processor.overlay_alpha = new.overlay_alpha
                pair.processor.flow_viz_max_px = new.flow_viz_max_px
                pair.processor.viz_max_rate_hz = new.viz_max_rate_hz
                pair.processor.viz_scale = new.viz_scale
        if old.outputs != new.outputs:
            self._update_publishers()
        with self._cond:
            self._cond.notify_all()
        self.get_logger().info('parameters set: ' + ', '.join(f'{p.name}={p.value}' for p in params))

    # -- logging -----------------------------------------------------------------------------------
    def _warn(self, key: str, text: str, error: bool = False) -> None:
        """Throttled warning or error.

        The two severities need two separate call instructions: rclpy keys each log call site by its
        bytecode position and raises ValueError when one site logs at another severity than before.
        """
        if not self._throttle.ready(key):
            return
        if error:
            self.get_logger().error(text)
        else:
            self.get_logger().warning(text)

    # -- callbacks ---------------------------------------------------------------------------------
    def _on_camera_info(self, stream: str, msg: CameraInfo) -> None:
        self._camera_info[stream] = msg

    def _on_image(self, stream: str, msg: Image | CompressedImage) -> Added | None:
        """Decode and check one input message and give it to the core (what it did is returned for tests)."""
        st = self.streams[stream]
        st.received.tick()
        topic = st.topic
        try:
            limit = self.settings.inputs[stream].max_pixels
            if isinstance(msg, CompressedImage):
                arr, encoding = decode_compressed(msg, topic, limit)
            else:
                arr, encoding = from_image_msg(msg, topic, limit), msg.encoding
            if encoding not in STREAM_ENCODINGS[stream]:
                raise NmrUserError(f'topic {topic}: encoding {encoding!r} cannot be used as {stream} '
                                   f'(expected {", ".join(STREAM_ENCODINGS[stream])}); message ignored')
        except NmrUserError as err:
            st.bad += 1
            self._warn(f'bad:{stream}', f'{err} ({st.bad} bad messages so far)')
            return None
        size = (int(arr.shape[0]), int(arr.shape[1]))
        if st.last_size is not None and size != st.last_size:
            self._warn(f'size:{stream}', f'topic {topic}: image size changed from {st.last_size[1]}x'
                       f'{st.last_size[0]} to {size[1]}x{size[0]}; continuing at the new size')
        st.last_size, st.last_encoding = size, encoding
        added = self.core.add(Frame(stream, header_stamp_ns(msg.header), arr, encoding, msg.header))
        if added.jump is not None:
            st.backwards += 1
            self._warn(f'back:{stream}', f'topic {topic}: header stamp went backwards by {added.jump.back_s:.3f} s '
                       f'(bag loop or clock reset); synchronisation of the pairs using {stream} restarted')
        if not added.sets:
            return added
        for pset in added.sets:
            self.pairs[pset.pair].stats.synced.tick()
        for name, stale in added.stale.items():
            with self.pairs[name].stats.lock:
                self.pairs[name].stats.stale_dropped += stale
        with self._cond:
            self._cond.notify()
        return added

    # -- workers -----------------------------------------------------------------------------------
    def start_workers(self) -> None:
        """One worker thread per pair (module docstring); called by the constructor."""
        self._stop.clear()
        self._workers = [threading.Thread(target=self._work, args=(name,), name=f'nmr-{name}', daemon=True)
                         for name in self.pairs]
        for worker in self._workers:
            worker.start()

    def _work(self, name: str) -> None:
        pair = self.pairs[name]
        while not self._stop.is_set():
            self._check_models([pair])
            with self._cond:
                self._cond.wait_for(lambda: self._stop.is_set() or self.core.has_pending(name), timeout=0.5)
            for job in self.core.take(name):
                if self._stop.is_set():
                    return
                try:
                    fuse = self._run_pair(pair, job)
                    if fuse:
                        self._maybe_fuse()
                except Exception:
                    if self._stop.is_set():  # the context went away under a publish: that is the shutdown
                        return
                    raise

    def _check_models(self, pairs: Sequence[PairRuntime] | None = None) -> None:
        """Load each pair's model when it is first needed, and again when its file appears or changes."""
        now = time.monotonic()
        for pair in (self.pairs.values() if pairs is None else pairs):
            if geometry_for(self.geometry, pair.name) is not None and not self.settings.residual:
                self._geometry_only(pair)
                continue
            if now - pair.model_checked < self.settings.model_retry_s:
                continue
            pair.model_checked = now
            path = model_path(self.settings, pair.name)
            stamp = _file_stamp(path)
            if pair.model_file == path and pair.model_stamp == stamp:  # nothing changed since last try
                if stamp is None:
                    self._missing_model(pair, path)
                continue
            pair.model_file, pair.model_stamp = path, stamp
            if stamp is None:
                self._missing_model(pair, path)
            else:
                self._load_model(pair, path)

    def _log_rig(self, text: str) -> None:
        """The geometric stage's one-time messages (size scaling, plane fallback, depth back)."""
        self.get_logger().info(text)

    def _geometry_only(self, pair: PairRuntime) -> None:
        """With a rig and `residual` false no model is needed: the processor runs the geometry alone."""
        if pair.processor is None or pair.processor.registrar is not None:
            pair.processor = make_processor(None, pair.name, self.settings, self.geometry)
            pair.backend, pair.device, pair.model_file = 'geometry', 'cpu', None
            pair.stats.state, pair.stats.level = 'running', OK
            self.get_logger().info(f'{pair.name}: registering through the rig {self.settings.rig} '
                                   '(geometry only, no network: residual is false)')

    def _missing_model(self, pair: PairRuntime, path: Path) -> None:
        pair.processor = None
        pair.stats.state, pair.stats.level = f'idle: model file {path} does not exist', ERROR
        self._warn(f'model:{pair.name}', f'{pair.name}: model file {path} does not exist: train and export '
                   f'one (nmr train, nmr export) or set parameter models.{pair.name}; this pair stays idle',
                   error=True)

    def _load_model(self, pair: PairRuntime, path: Path) -> None:
        s = self.settings
        try:
            def log(text: str) -> None:
                self.get_logger().info(f'{pair.name}: {text}')

            registrar = create_registrar(path, s, pair.name, log=log, parallel=len(self.pairs))  # refuses
            # another pair's model
            pair.processor = make_processor(registrar, pair.name, s, geometry_for(self.geometry, pair.name))
        except NmrUserError as err:
            pair.processor = None
            pair.stats.state, pair.stats.level = f'idle: {err}', ERROR
            self._warn(f'model:{pair.name}', f'{pair.name}: {err}; this pair stays idle', error=True)
            return
        except Exception as err:
            pair.processor = None
            first = str(err).splitlines()[0] if str(err) else ''
            pair.stats.state, pair.stats.level = f'idle: cannot load {path}', ERROR
            self._warn(f'model:{pair.name}', f'{pair.name}: cannot load model file {path} '
                       f'({type(err).__name__}: {first}); this pair stays idle', error=True)
            return
        pair.backend, pair.device = registrar.backend, str(registrar.device)
        pair.stats.state, pair.stats.level = 'running', OK
        self.get_logger().info(f'{pair.name}: model {path} loaded ({pair.backend} on {pair.device})')

    def _wanted(self, pair: PairRuntime) -> tuple[list[str], bool]:
        with self._pub_lock:
            wanted = [o for o, pub in pair.publishers.items() if pub.get_subscription_count() > 0]
            fused = any(pub.get_subscription_count() > 0 for pub in self.fused_publishers.values())
        return wanted, fused

    def _publish(self, publishers: dict[str, Any], outputs: dict[str, tuple[np.ndarray, str]], header: Header,
                 info_stream: str, info_publisher: Any) -> None:
        """Publish outputs (those whose publisher still exists) and the fixed camera's camera_info."""
        with self._pub_lock:
            for name, (arr, encoding) in outputs.items():
                if name in publishers:
                    publishers[name].publish(to_image_msg(arr, encoding, header))
            info = self._camera_info.get(info_stream)
            if info is not None and info_publisher is not None:
                info_publisher.publish(_restamped(info, header))

    def _run_pair(self, pair: PairRuntime, job: PairSet) -> bool:
        """Register one set and publish its outputs; True if the fused output may now be due."""
        wanted, fused = self._wanted(pair)
        stats = pair.stats
        if not wanted and not fused:
            with stats.lock:
                stats.lazy_skipped += 1
                if pair.processor is not None:
                    stats.state, stats.level = 'idle: no subscribers', OK
            return False
        if pair.processor is None:
            return False
        fixed = job.fixed
        t0 = time.perf_counter()
        try:
            done = self.core.register(job, pair.processor, wanted, fused=fused)
            self._publish(pair.publishers, done.outputs, fixed.header, pair.fixed_stream, pair.info_publisher)
        except NmrUserError as err:
            with stats.lock:
                stats.errors += 1
                if isinstance(err, NonFiniteFlowError):
                    stats.nonfinite += 1
                    stats.state, stats.level = 'model returns non-finite flows (not published)', WARN
            self._warn(f'run:{pair.name}', f'{pair.name}: set at {fixed.stamp_ns / 1e9:.3f} s skipped: {err}')
            return False
        except Exception as err:
            if self._stop.is_set():
                raise
            with stats.lock:
                stats.errors += 1
                stats.state, stats.level = f'error: {type(err).__name__}', WARN
            self._warn(f'run:{pair.name}', f'{pair.name}: registration failed ({type(err).__name__}: {err})',
                       error=True)
            return False
        latency_ms = (self.get_clock().now().nanoseconds - fixed.stamp_ns) / 1e6
        with stats.lock:
            stats.processed.tick()
            if abs(latency_ms) <= CLOCK_MISMATCH_S * 1e3:
                stats.latency.add(latency_ms)
            else:  # not a latency: the stamps come from another clock (see diagnostics)
                stats.clock_offset_s = -latency_ms / 1e3
            stats.inference_ms.add((time.perf_counter() - t0) * 1e3)
            stats.state, stats.level = 'running', OK
        return fused and bool(self.fused_publishers)

    def _maybe_fuse(self) -> None:
        lwir = self.pairs.get('rgb_lwir')
        if lwir is None or not self._wanted(lwir)[1]:
            return
        try:
            fused = self.core.fuse()
            if fused is not None:
                self._publish(self.fused_publishers, fused.outputs, fused.lwir.header, 'lwir', self._fused_info_pub)
        except Exception as err:
            self._warn('fused', f'fused output failed ({type(err).__name__}: {err})', error=True)

    # -- inputs that never delivered -----------------------------------------------------------------
    def _report_missing_inputs(self) -> None:
        """A throttled warning per input without any message `input_wait_s` after start.

        Why: a misspelled topic (`topics.lwir:=/flir_boson/imgae_raw`) showed only on /diagnostics, which a
        user without the ROS 2 CLI never sees; the log said nothing. The topics of the same type that have
        publishers are listed, as `nmr register-bag` lists a bag's topics.
        """
        waited = time.monotonic() - self._started
        if waited < self.settings.input_wait_s:
            return
        for stream, st in self.streams.items():
            if st.received.count or not self._throttle.ready(f'missing:{stream}'):
                continue
            sub = self._subs[stream]
            msg_type = 'sensor_msgs/msg/' + ('Image' if self.settings.inputs[stream].transport == 'raw'
                                             else 'CompressedImage')
            others = self._published_topics(msg_type, exclude=sub.topic_name)
            self.get_logger().warning(
                f'{stream}: no message on {sub.topic_name} in the {waited:.0f} s since start; {msg_type} topics '
                f'with publishers: {", ".join(others) or "none"}; set topics.{stream} '
                f'(--ros-args -p topics.{stream}:=TOPIC) if one of them is the {stream} camera')

    def _published_topics(self, msg_type: str, exclude: str) -> list[str]:
        """Topics of `msg_type` on the graph that someone other than this node publishes."""
        me = (self.get_name(), self.get_namespace())
        found = []
        for topic, types in self.get_topic_names_and_types():
            if msg_type not in types or topic == exclude:
                continue
            if any((i.node_name, i.node_namespace) != me for i in self.get_publishers_info_by_topic(topic)):
                found.append(topic)
        return sorted(found)

    # -- diagnostics -------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        name = self.get_fully_qualified_name()
        statuses = [stream_status(name, self.streams, self.settings.input_timeout_s)]
        for pair in self.pairs.values():
            fixed = self.streams[pair.fixed_stream]
            silent = fixed.received.silent_for()
            state, level = None, None
            if pair.processor is not None and (silent is None or silent > self.settings.input_timeout_s):
                state, level = f'waiting: no {pair.fixed_stream} messages on {fixed.topic}', WARN
                if silent is not None:
                    self._warn(f'stopped:{pair.name}', f'{pair.name}: no {pair.fixed_stream} messages on '
                               f'{fixed.topic} for {silent:.1f} s; this pair waits (others keep running)')
            statuses.append(pair_status(name, pair.name, pair.stats, pair.backend, pair.device,
                                        str(pair.model_file or ''), self.core.sync_dropped(pair.name),
                                        state, level))
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), statuses))

    def stop(self) -> None:
        """Stop the workers: a set being registered finishes (its publish may fail quietly), none starts."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout=5.0)


class _Signals:
    """SIGINT/SIGTERM handlers installed before rclpy.init, so that rclpy's own handler chains to them.

    rclpy's handler shuts the context down (the executor returns); this one only records the request,
    so a signal never raises KeyboardInterrupt. `ignore` is called when clean-up starts: a terminal's
    Ctrl-C reaches the whole process group and `ros2 launch` forwards a second SIGINT, which used to
    interrupt the clean-up with a traceback and exit code -2.
    """

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, _signum: int, _frame: Any) -> None:
        self.requested = True

    @staticmethod
    def ignore() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `register_node`: 0 on shutdown (and for --help), 2 on invalid parameters or arguments
    outside --ros-args (one line, no traceback)."""
    args = list(sys.argv if argv is None else argv)
    extra = non_ros_arguments(args)
    if any(a in HELP_FLAGS for a in extra):
        print(usage_text())
        return 0
    problem = argument_problem(extra)
    if problem:  # rclpy would ignore them: the node ran with its defaults and never said so
        print(problem, file=sys.stderr)
        return 2
    if hasattr(signal, 'SIGUSR1'):  # `kill -USR1 <pid>` prints every thread's stack (diagnosing hangs)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    signals = _Signals()
    try:
        rclpy.init(args=args)
    except Exception as err:
        print(f'{NODE_NAME}: error: cannot start ROS 2: {str(err).splitlines()[0]}', file=sys.stderr)
        return 2
    try:
        node = RegisterNode()
    except NmrUserError as err:
        print(f'{NODE_NAME}: error: {err}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except Exception as err:
        rclpy.try_shutdown()
        if signals.requested:  # stopped while loading the models: the context went away under us
            return 0
        print(f'{NODE_NAME}: error: invalid parameters: {str(err).splitlines()[0]}', file=sys.stderr)
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A timer or subscription callback that was publishing when the signal shut the context down
        # raises RCLError ('publisher's context is invalid') out of spin: that is the shutdown, not a bug.
        if not signals.requested:
            raise
    finally:
        signals.ignore()
        node.stop()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        signals.ignore()  # rclpy restores the handlers it replaced when it shuts down
    return 0


if __name__ == '__main__':
    os.environ.setdefault('PYTHONUNBUFFERED', '1')
    sys.exit(main())
