"""Run-time statistics of register_node and their /diagnostics form (diagnostic_updater is not available).

Rates are measured over a sliding window of event times; latency is header stamp -> publish in the
node's clock (so it stays meaningful with use_sim_time). Stamps further than CLOCK_MISMATCH_S from the node
clock are not latencies (a bag played without use_sim_time, a camera without time sync): they are counted
and the status says so instead of a percentile of 26 hours. Counters are cumulative since start.
Every status carries `hardware_id` (the node's name: the cameras are not ours to name), which
diagnostic_aggregator and rqt_runtime_monitor group by.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
CLOCK_MISMATCH_S = 60.0
"""A stamp this far from the node clock is not a latency but a different clock."""


class RateMeter:
    """Events per second over the last `window_s` seconds (monotonic clock)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self.count = 0
        self.last: float | None = None

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._times.append(now)
        self.count += 1
        self.last = now
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        span = max(now - self._times[0], self._times[-1] - self._times[0])
        return (len(self._times) - 1) / span if span > 0 else 0.0

    def silent_for(self, now: float | None = None) -> float | None:
        """Seconds since the last event, None if there never was one."""
        now = time.monotonic() if now is None else now
        return None if self.last is None else now - self.last


class LatencyWindow:
    """The last N latencies (ms) for percentiles."""

    def __init__(self, size: int = 300) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, ms: float) -> None:
        self._values.append(ms)

    def percentiles(self) -> dict[str, float]:
        if not self._values:
            return {}
        p50, p90, p99 = np.percentile(np.fromiter(self._values, float), [50, 90, 99])
        return {'p50': float(p50), 'p90': float(p90), 'p99': float(p99)}


@dataclass
class PairStats:
    """Counters of one pair (updated from callbacks and the worker, read by the diagnostics timer)."""

    synced: RateMeter = field(default_factory=RateMeter)
    processed: RateMeter = field(default_factory=RateMeter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    inference_ms: LatencyWindow = field(default_factory=LatencyWindow)
    stale_dropped: int = 0    # synchronised sets replaced by a newer one before inference took them
    lazy_skipped: int = 0     # sets not computed because nobody subscribes to the pair's outputs
    errors: int = 0           # sets that failed (bad input, model error)
    nonfinite: int = 0        # of those, sets whose flow had NaN / inf values (not published)
    clock_offset_s: float | None = None  # stamp - node clock of the last set outside CLOCK_MISMATCH_S
    state: str = 'starting'
    level: bytes = OK
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class StreamStats:
    topic: str
    received: RateMeter = field(default_factory=RateMeter)
    bad: int = 0
    backwards: int = 0
    last_size: tuple[int, int] | None = None
    last_encoding: str = ''


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, float):
        value = f'{value:.2f}'
    return KeyValue(key=key, value=str(value))


def stream_status(node_name: str, streams: dict[str, StreamStats],
                  stopped_after_s: float) -> DiagnosticStatus:
    """One status for all inputs; WARN naming any input that stopped (or never arrived)."""
    now = time.monotonic()
    values: list[KeyValue] = []
    stopped: list[str] = []
    for name, s in streams.items():
        silent = s.received.silent_for(now)
        values += [_kv(f'{name}.topic', s.topic), _kv(f'{name}.rate_hz', s.received.rate(now)),
                   _kv(f'{name}.received', s.received.count), _kv(f'{name}.bad_messages', s.bad),
                   _kv(f'{name}.stamps_backwards', s.backwards)]
        if s.last_size:
            values.append(_kv(f'{name}.size', f'{s.last_size[1]}x{s.last_size[0]} {s.last_encoding}'))
        if silent is None or silent > stopped_after_s:
            stopped.append(f'{name} ({s.topic})')
    message = 'no messages from: ' + ', '.join(stopped) if stopped else 'all inputs arriving'
    return DiagnosticStatus(level=WARN if stopped else OK, name=f'{node_name}: inputs', message=message,
                            hardware_id=node_name, values=values)


def pair_status(node_name: str, pair: str, stats: PairStats, backend: str, device: str,
                model: str, unmatched: list[int] | None, state: str | None = None,
                level: bytes | None = None) -> DiagnosticStatus:
    """One pair's status; `state`/`level` override the pair's own (e.g. waiting for a stopped input)."""
    now = time.monotonic()
    with stats.lock:
        latency = stats.latency.percentiles()
        inference = stats.inference_ms.percentiles()
        values = [
            _kv('synced_rate_hz', stats.synced.rate(now)),
            _kv('processed_rate_hz', stats.processed.rate(now)),
            _kv('synced_sets', stats.synced.count), _kv('processed_sets', stats.processed.count),
            _kv('stale_dropped', stats.stale_dropped), _kv('lazy_skipped', stats.lazy_skipped),
            _kv('errors', stats.errors), _kv('nonfinite_flows', stats.nonfinite),
            _kv('backend', backend), _kv('device', device), _kv('model', model),
        ]
        values += [_kv(f'latency_ms.{k}', v) for k, v in latency.items()]
        if stats.clock_offset_s is not None and not latency:
            values.append(_kv('latency_ms', clock_mismatch_text(stats.clock_offset_s)))
        values += [_kv(f'inference_ms.{k}', v) for k, v in inference.items()]
        if unmatched is not None:
            values.append(_kv('unmatched_dropped', sum(unmatched)))
        return DiagnosticStatus(level=level if level is not None else stats.level,
                                name=f'{node_name}: {pair}', hardware_id=node_name, values=values,
                                message=state if state is not None else stats.state)


def clock_mismatch_text(offset_s: float) -> str:
    """Why there is no latency: the stamps are `offset_s` away from the node clock."""
    return (f'n/a: header stamps are {abs(offset_s):.0f} s {"behind" if offset_s < 0 else "ahead of"} the node '
            'clock (bag time without use_sim_time, or a camera clock that is not synchronised)')


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = statuses
    return msg


class Throttle:
    """Per-key rate limit for log lines: the same problem is logged at most every `period_s` seconds."""

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def ready(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                return False
            self._last[key] = now
            return True
