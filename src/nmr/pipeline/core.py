"""The frame-set core of `register_node` and `nmr register-bag`: frames in, synchronised sets and outputs out.

Both tools are thin adapters around one `FrameSetCore`: the node turns ROS messages into `Frame`s and
publishes what comes out, register-bag does the same with bag messages and writes an output bag. So the
policies below exist once, and the live topics and the offline bag are made of the same sets:

- **Pairs.** One `ApproxTimeSynchronizer` per pair (RGB + that pair's fixed camera), so a pair keeps
  running when the other pair's camera stops.
- **Time jumps.** A stream whose stamp goes backwards (bag loop, clock reset) restarts the pairs that use
  that stream, and only those; each keeps the partner's frames that already lie on the new time line
  (`ApproxTimeSynchronizer.restart`, with what `TimeLines` says to keep). Independent topics deliver a
  jump one stream after the other: resetting everything at each stream's jump would throw away the sets
  the streams that jumped first had already formed (that lost sets after every bag loop and stalled the
  node tests). A set already formed stays queued: it is a valid set.
- **Drop-stale.** `keep='newest'` (live): one pending set per pair; a newer set replaces a waiting one,
  which is counted stale, so inference always works on the newest frames and nothing queues up.
  `keep='all'` (offline): nothing is late, every set is kept in order.
- **Fused pairing.** The fused output (nmr.pipeline.fused) is made once per RGB frame that both pairs
  registered, from those two registrations.
- **Depth as an auxiliary input** (only with a rig, `depth_aux`): the geometric stage of `rgb_lwir`
  needs the depth frame of the same instant, so the core also keeps the last `queue_size` depth frames
  (even when the `rgb_depth` pair is not configured) and gives each `rgb_lwir` set, when it is taken,
  the depth frame nearest in time to its LWIR frame (`PairSet.depth`), or none when the nearest is more
  than `depth_max_age_ns` away. Stamps are compared on the RGB clock: a stream stamped `s` was exposed
  at `s + offset` (the rig's `time_offset_s`), and the pairs' synchronisers also compare those times.
  Without a rig nothing of this happens (offsets 0, no depth kept).

Thread use: `add` and `take` may run on one thread (the node's subscription callbacks) while `register`
runs on another (its inference worker); the state they share is guarded by one lock, and inference runs
outside it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from nmr.data.encodings import to_rgb
from nmr.data.sync import ApproxTimeSynchronizer, TimeLines
from nmr.domain import PAIR_FIXED_KIND, PAIRS
from nmr.pipeline.fused import fuse
from nmr.pipeline.outputs import NonFiniteFlowError, PairProcessor

Outputs = dict[str, tuple[np.ndarray, str]]
"""output name -> (array, ROS encoding)"""
Keep = Literal['newest', 'all']


@dataclass(frozen=True)
class Frame:
    """One decoded input image; `header` is the adapter's own (rclpy or rosbags), handed back with outputs."""

    stream: str
    stamp_ns: int
    array: np.ndarray
    encoding: str
    header: Any


@dataclass(frozen=True)
class PairSet:
    """A synchronised (RGB, fixed) set of one pair: what gets registered."""

    pair: str
    rgb: Frame
    fixed: Frame
    depth: Frame | None = None  # rgb_lwir with a rig: the depth frame of the same instant (None: none near)
    rgb_previous: Frame | None = None  # rgb_lwir with a rig: the RGB frame before `rgb` (motion compensation)


@dataclass(frozen=True)
class TimeJump:
    """`stream`'s stamp went backwards by `back_s`; `pairs` were restarted."""

    stream: str
    back_s: float
    pairs: tuple[str, ...]


@dataclass(frozen=True)
class Added:
    """What one frame did: the sets it completed, how many waiting sets they made stale, a time jump."""

    sets: tuple[PairSet, ...]
    stale: dict[str, int]
    jump: TimeJump | None


@dataclass
class PairCounts:
    """One pair's frames: offered -> synchronised -> registered, and why the rest went."""

    offered_rgb: int = 0
    offered_fixed: int = 0
    synchronised: int = 0
    stale: int = 0        # sets replaced by a newer one before inference took them (keep='newest')
    registered: int = 0
    nonfinite: int = 0    # sets whose flow had NaN / inf values: not published, not written

    @property
    def unmatched_rgb(self) -> int:
        """RGB frames with no fixed frame within the slop (or still waiting for one)."""
        return self.offered_rgb - self.synchronised

    @property
    def unmatched_fixed(self) -> int:
        """Fixed frames with no RGB frame within the slop (or still waiting for one)."""
        return self.offered_fixed - self.synchronised

    def as_json(self) -> dict[str, int]:
        return {**self.__dict__, 'unmatched_rgb': self.unmatched_rgb, 'unmatched_fixed': self.unmatched_fixed}


@dataclass(frozen=True)
class Registered:
    """One registered set: its outputs (on the fixed grid, the fixed frame's header) and what fusion needs."""

    pset: PairSet
    rgb_hw: tuple[int, int]
    flow: np.ndarray
    registered: np.ndarray | None  # None when neither an output nor fusion needed it
    outputs: Outputs
    timings_ms: dict[str, float] = field(default_factory=dict)
    source: str | None = None  # with a rig: 'depth' or 'plane' (the geometric prior's source)


@dataclass(frozen=True)
class Fused:
    """Fused outputs on the LWIR grid; they carry `lwir`'s header."""

    lwir: Frame
    outputs: Outputs


@dataclass
class _PairState:
    sync: ApproxTimeSynchronizer[Frame]
    counts: PairCounts = field(default_factory=PairCounts)
    pending: list[PairSet] = field(default_factory=list)
    last: Registered | None = None


class FrameSetCore:
    """Synchronisation, time jumps, drop-stale and fused pairing for the configured pairs (module docstring)."""

    def __init__(self, pairs: Sequence[str], slop_ns: int, queue_size: int, keep: Keep, depth_aux: bool = False,
                 offsets_ns: Mapping[str, int] | None = None, depth_max_age_ns: int = 50_000_000) -> None:
        unknown = [p for p in pairs if p not in PAIRS]
        if unknown or not pairs:
            raise ValueError(f'pairs {list(pairs)}: expected some of {", ".join(PAIRS)}')
        if keep not in ('newest', 'all'):
            raise ValueError(f"keep {keep!r}: expected 'newest' or 'all'")
        self.keep = keep
        self._lock = threading.Lock()
        self._pairs = {p: _PairState(ApproxTimeSynchronizer(2, slop_ns, queue_size)) for p in pairs}
        self._time_lines = TimeLines(slop_ns)  # any stamp going backwards is a jump: drivers never reorder
        self._fused_done: tuple[int, int] | None = None
        self._offsets = {s: int(v) for s, v in (offsets_ns or {}).items()}
        self.depth_aux = bool(depth_aux) and 'rgb_lwir' in self._pairs
        self._depth_max_age_ns = int(depth_max_age_ns)
        self._depths: deque[Frame] = deque(maxlen=max(4, queue_size))
        self._rgbs: deque[Frame] = deque(maxlen=max(4, queue_size))

    @property
    def pairs(self) -> tuple[str, ...]:
        return tuple(self._pairs)

    @property
    def streams(self) -> tuple[str, ...]:
        """The cameras the configured pairs use: 'rgb' first, then the fixed cameras (and depth for depth_aux)."""
        used = ['rgb', *(PAIR_FIXED_KIND[p] for p in self._pairs)]
        if self.depth_aux and 'depth' not in used:
            used.append('depth')
        return tuple(used)

    def counts(self, pair: str) -> PairCounts:
        return self._pairs[pair].counts

    def sync_dropped(self, pair: str) -> list[int]:
        """Frames the pair's synchroniser dropped, [rgb, fixed] (no partner within the slop, duplicates)."""
        return list(self._pairs[pair].sync.dropped)

    # -- frames in -------------------------------------------------------------------------------------
    def add(self, frame: Frame) -> Added:
        """Offer one frame to the pairs that use its stream; returns the sets it completed (also queued)."""
        completed: list[PairSet] = []
        stale: dict[str, int] = {}
        with self._lock:
            jump = self._time_line(frame)
            if self.depth_aux and frame.stream == 'depth':
                self._depths.append(frame)
            if self.depth_aux and frame.stream == 'rgb':
                self._rgbs.append(frame)
            exposed_ns = frame.stamp_ns + self._offsets.get(frame.stream, 0)
            for name, state in self._pairs.items():
                index = self._index(name, frame.stream)
                if index is None:
                    continue
                if index == 0:
                    state.counts.offered_rgb += 1
                else:
                    state.counts.offered_fixed += 1
                sets = [PairSet(name, rgb, fixed) for rgb, fixed in state.sync.add(index, exposed_ns, frame)]
                if not sets:
                    continue
                state.counts.synchronised += len(sets)
                completed += sets
                state.pending += sets
                if self.keep == 'newest':
                    stale[name] = len(state.pending) - 1
                    state.counts.stale += stale[name]
                    del state.pending[:-1]
        return Added(tuple(completed), stale, jump)

    def _index(self, pair: str, stream: str) -> int | None:
        """The stream's index in `pair`'s synchroniser (0 = RGB, 1 = fixed), None if the pair does not use it."""
        if stream == 'rgb':
            return 0
        return 1 if stream == PAIR_FIXED_KIND[pair] else None

    def _time_line(self, frame: Frame) -> TimeJump | None:
        """Restart the pairs using `frame.stream` if its stamp went backwards (caller holds the lock)."""
        jump = self._time_lines.observe(frame.stream, frame.stamp_ns)
        if jump is None:
            return None
        previous, keep_until = jump
        restarted = []
        for name, state in self._pairs.items():
            index = self._index(name, frame.stream)
            if index is None:
                continue
            state.sync.restart(index, keep_until)
            state.last = None
            restarted.append(name)
        if frame.stream == 'depth':
            self._depths.clear()
        if frame.stream == 'rgb':
            self._rgbs.clear()
        self._fused_done = None
        return TimeJump(frame.stream, (previous - frame.stamp_ns) / 1e9, tuple(restarted))

    def take(self, pair: str | None = None) -> list[PairSet]:
        """The queued sets (of `pair`, or of every pair, pair by pair), each pair's oldest first
        (keep='newest': at most one per pair)."""
        with self._lock:
            states = [self._pairs[pair]] if pair is not None else list(self._pairs.values())
            sets = [s for state in states for s in state.pending]
            for state in states:
                state.pending = []
            if self.depth_aux:
                sets = [self._with_depth(s) if s.pair == 'rgb_lwir' else s for s in sets]
        return sets

    def _with_depth(self, pset: PairSet) -> PairSet:
        """`pset` with the kept depth frame nearest in time to its fixed frame, if near enough, and the RGB
        frame before its RGB frame (at most 0.2 s before), for the geometric stage (lock held)."""
        earlier = [f for f in self._rgbs if 0 < pset.rgb.stamp_ns - f.stamp_ns <= 200_000_000]
        if earlier:
            pset = replace(pset, rgb_previous=max(earlier, key=lambda f: f.stamp_ns))
        if not self._depths:
            return pset
        off = self._offsets.get('depth', 0)
        at = pset.fixed.stamp_ns + self._offsets.get(pset.fixed.stream, 0)
        best = min(self._depths, key=lambda d: abs(d.stamp_ns + off - at))
        if abs(best.stamp_ns + off - at) > self._depth_max_age_ns:
            return pset
        return replace(pset, depth=best)

    def has_pending(self, pair: str | None = None) -> bool:
        with self._lock:
            if pair is not None:
                return bool(self._pairs[pair].pending)
            return any(state.pending for state in self._pairs.values())

    # -- outputs ---------------------------------------------------------------------------------------
    def register(self, pset: PairSet, processor: PairProcessor, wanted: Iterable[str],
                 fused: bool | None = None, prior: np.ndarray | None = None) -> Registered:
        """Register one set and build the `wanted` pair outputs (only those); remembered for fusion.

        `fused`: the fused output is wanted, so the registered image is made even if `registered` is not
        (None: whenever both pairs are configured). `prior`: a flow for this set known without the network
        (PairProcessor.run; the rig hook). Raises PairInputError (NmrUserError) for inputs that
        cannot be registered; the adapter decides whether that skips the set (live) or ends the run
        (offline). Safe to call for different pairs from different threads at once (one processor each).
        """
        if fused is None:
            fused = all(p in self._pairs for p in PAIRS)
        moving = to_rgb(pset.rgb.array, pset.rgb.encoding)
        depth = (pset.depth.array, pset.depth.encoding) if pset.depth is not None else None
        previous = None
        if pset.rgb_previous is not None:  # where the RGB content moves from this frame's exposure to the fixed one
            at = pset.fixed.stamp_ns + self._offsets.get(pset.fixed.stream, 0)
            alpha = (at - pset.rgb.stamp_ns) / (pset.rgb_previous.stamp_ns - pset.rgb.stamp_ns)
            previous = (to_rgb(pset.rgb_previous.array, pset.rgb_previous.encoding), float(alpha))
        try:
            result = processor.run(moving, pset.fixed.array, pset.fixed.encoding, wanted, pset.fixed.stamp_ns,
                                   need_registered=fused and pset.pair == 'rgb_lwir', prior=prior, depth=depth,
                                   previous=previous)
        except NonFiniteFlowError:  # counted here, for both adapters; nothing of the set is published
            with self._lock:
                self._pairs[pset.pair].counts.nonfinite += 1
            raise
        done = Registered(pset, (int(moving.shape[0]), int(moving.shape[1])), result.flow, result.registered,
                          result.outputs, result.timings_ms, result.prior_source)
        with self._lock:
            state = self._pairs[pset.pair]
            state.counts.registered += 1
            state.last = done
        return done

    def fuse(self) -> Fused | None:
        """The fused outputs of the newest RGB frame both pairs registered, once per frame; else None."""
        with self._lock:
            lwir, depth = self._pairs.get('rgb_lwir'), self._pairs.get('rgb_depth')
            if lwir is None or depth is None or lwir.last is None or depth.last is None:
                return None
            a, b = lwir.last, depth.last
            key = (a.pset.rgb.stamp_ns, a.pset.fixed.stamp_ns)
            if a.pset.rgb.stamp_ns != b.pset.rgb.stamp_ns or key == self._fused_done or a.registered is None:
                return None
            self._fused_done = key
        fixed_a, fixed_b = a.pset.fixed, b.pset.fixed
        assert a.registered is not None
        outputs = fuse(fixed_a.array, fixed_a.encoding, a.flow, a.registered, fixed_b.array, fixed_b.encoding,
                       b.flow, a.rgb_hw)
        return Fused(fixed_a, outputs)
