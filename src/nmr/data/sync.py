"""Approximate-time synchroniser for N streams, keyed on ``header.stamp`` (never on record/arrival time).

``message_filters`` is not available everywhere the package runs (and bags are paired offline too), so
this is a small self-contained policy that the node, ``register-bag`` and the bag datasets share.

Policy (each message is used in at most one set; a set's stamps lie within ``slop_ns`` of its pivot):

1. Each stream keeps a queue sorted by stamp (out-of-order arrivals are inserted in place). A message
   whose stamp equals one already queued, or the last one used, on that stream is a duplicate: it is
   dropped and counted in ``duplicates`` (and ``dropped``). A message older than the last one used on its
   stream can no longer be matched in order: it is dropped (``dropped``). A queue longer than
   ``queue_size`` drops its oldest message.
2. Matching runs while every stream has a queued message. The pivot stream is the one whose newest
   message is oldest (ties: lowest index): only then does every other stream already hold a message at
   or after the pivot's time, so the choice below cannot be bettered by a later, in-order message on
   those streams. The pivot message is the oldest one of the pivot stream, at time ``t``.
3. For every other stream, the partner is the message nearest to ``t`` with ``|stamp - t| <= slop_ns``
   that is not strictly nearer to another queued message of the pivot stream (mutual best; ties go to
   the older message). If every stream has a partner, the set is emitted, its messages are removed, and
   older messages on the partner streams are dropped (they could only pair with pivots already gone).
   Otherwise the pivot message is dropped: no in-order message can still match it.
4. Decisions are made as soon as step 2 allows (no extra waiting for the pivot stream's next message),
   which keeps the node's latency at one message of the slowest stream.

When time jumps backwards (a bag restarts, ``/clock`` resets), call ``restart(stream, keep_until_ns)``
(or ``reset()``): otherwise every new message is older than the last used one and is dropped. Independent
topics deliver a jump one stream after the other, so ``restart`` keeps what the new time line already
holds on the other streams: their messages at or before ``keep_until_ns``, including those dropped as
pivots without a partner since their last used message (a pivot of the new time line finds no partner
among the old time line's messages still queued on the stream that has not jumped yet). Counters survive
both.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar('T')


@dataclass(order=True)
class _Entry(Generic[T]):
    stamp: int
    item: T = field(compare=False)


class ApproxTimeSynchronizer(Generic[T]):
    """Group messages of ``n_streams`` streams whose stamps lie within ``slop_ns``; see module docstring.

    Generic in the item type ``T`` (whatever the caller stores per message), so sets come back typed.
    """

    def __init__(self, n_streams: int, slop_ns: int, queue_size: int = 10) -> None:
        if n_streams < 1:
            raise ValueError(f'n_streams must be >= 1, got {n_streams}')
        if slop_ns < 0:
            raise ValueError(f'slop_ns must be >= 0, got {slop_ns}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.n_streams = n_streams
        self.slop_ns = int(slop_ns)
        self.queue_size = int(queue_size)
        self.dropped: list[int] = [0] * n_streams
        self.duplicates: list[int] = [0] * n_streams
        self.matched = 0
        self._queues: list[list[_Entry[T]]] = [[] for _ in range(n_streams)]
        self._last_used: list[int | None] = [None] * n_streams
        self._unpaired: list[list[_Entry[T]]] = [[] for _ in range(n_streams)]
        """Pivots dropped without a partner since their stream's last used message (newest queue_size):
        what ``restart`` can give a second chance on a new time line."""

    def reset(self) -> None:
        """Forget queued messages and the last used stamps (time jumped backwards); keep the counters."""
        self._queues = [[] for _ in range(self.n_streams)]
        self._last_used = [None] * self.n_streams
        self._unpaired = [[] for _ in range(self.n_streams)]

    def restart(self, stream: int, keep_until_ns: int) -> None:
        """Time jumped backwards on ``stream``: start a new time line (see module docstring).

        Forgets ``stream``'s queue and every stream's last used stamp. The other streams keep their
        messages stamped at or before ``keep_until_ns``, queued or dropped unpaired (those are counted
        as dropped no more); the queued messages not kept are counted as dropped. No set can complete
        here: ``stream``'s partners are yet to come.
        """
        if not 0 <= stream < self.n_streams:
            raise IndexError(f'stream {stream} out of range 0..{self.n_streams - 1}')
        for s in range(self.n_streams):
            queued = self._queues[s]
            kept: list[_Entry[T]] = []
            if s != stream:
                queued_stamps = {e.stamp for e in queued}
                revived = [e for e in self._unpaired[s] if e.stamp <= keep_until_ns and e.stamp not in queued_stamps]
                kept = sorted([e for e in queued if e.stamp <= keep_until_ns] + revived)[-self.queue_size:]
            # revived frames are no longer dropped; queued (or revived) frames not kept now are
            self.dropped[s] += len(queued) - len(kept)
            self._queues[s] = kept
        self._last_used = [None] * self.n_streams
        self._unpaired = [[] for _ in range(self.n_streams)]

    def pending(self, stream: int) -> int:
        """Number of messages queued on ``stream``."""
        return len(self._queues[stream])

    def add(self, stream: int, stamp_ns: int, item: T) -> list[tuple[T, ...]]:
        """Queue ``item`` stamped ``stamp_ns`` on ``stream``; return the sets completed by it, oldest first.

        Each set is a tuple with one item per stream, in stream order.
        """
        if not 0 <= stream < self.n_streams:
            raise IndexError(f'stream {stream} out of range 0..{self.n_streams - 1}')
        stamp = int(stamp_ns)
        queue = self._queues[stream]
        last = self._last_used[stream]
        if last is not None and stamp == last:
            self._drop_duplicate(stream)
            return []
        if last is not None and stamp < last:
            self.dropped[stream] += 1
            return []
        entry = _Entry(stamp, item)
        pos = bisect.bisect_left(queue, entry)
        if pos < len(queue) and queue[pos].stamp == stamp:
            self._drop_duplicate(stream)
            return []
        queue.insert(pos, entry)
        if len(queue) > self.queue_size:
            del queue[0]
            self.dropped[stream] += 1
        return self._match()

    def _drop_duplicate(self, stream: int) -> None:
        self.duplicates[stream] += 1
        self.dropped[stream] += 1

    def _match(self) -> list[tuple[T, ...]]:
        out: list[tuple[T, ...]] = []
        queues = self._queues
        while all(queues):
            pivot = min(range(self.n_streams), key=lambda s: (queues[s][-1].stamp, s))
            t = queues[pivot][0].stamp
            others = [e.stamp for e in queues[pivot][1:]]
            chosen: list[int] = []
            for s in range(self.n_streams):
                if s == pivot:
                    chosen.append(0)
                    continue
                idx = self._partner(queues[s], t, others)
                if idx is None:
                    break
                chosen.append(idx)
            else:
                items = tuple(queues[s][i].item for s, i in enumerate(chosen))
                for s, i in enumerate(chosen):
                    used = queues[s][i].stamp
                    self._last_used[s] = used
                    self.dropped[s] += i  # older, never-used messages on this stream
                    del queues[s][: i + 1]
                    self._unpaired[s] = [e for e in self._unpaired[s] if e.stamp > used]
                self.matched += 1
                out.append(items)
                continue
            unpaired = self._unpaired[pivot]
            unpaired.append(queues[pivot].pop(0))
            del unpaired[:-self.queue_size]
            self.dropped[pivot] += 1
        return out

    def _partner(self, queue: list[_Entry[T]], t: int, other_pivots: list[int]) -> int | None:
        """Index in ``queue`` of the best partner for a pivot at ``t``, or None; see module docstring."""
        candidates = sorted(
            (abs(e.stamp - t), e.stamp, i) for i, e in enumerate(queue) if abs(e.stamp - t) <= self.slop_ns
        )
        for dist, stamp, i in candidates:
            if all(abs(stamp - o) >= dist for o in other_pivots):
                return i
        return None


class TimeLines:
    """Per-stream time lines: notices a stamp going backwards and says what a restart should keep.

    The policy of ``ApproxTimeSynchronizer.restart`` in one place, for every synchroniser user (the
    frame-set core of the node and register-bag, the bag pair readers): the partner's frames up to
    half-way back to the old time line (at least ``slop_ns`` past the new stamp) already belong to the
    new one. ``tolerance_ns``: how far a stamp may go backwards and still count as late, not as a jump
    (the synchroniser then drops it as older than the last used one).
    """

    def __init__(self, slop_ns: int, tolerance_ns: int = 0) -> None:
        self.slop_ns = int(slop_ns)
        self.tolerance_ns = int(tolerance_ns)
        self._last: dict[object, int] = {}

    def observe(self, stream: object, stamp_ns: int) -> tuple[int, int] | None:
        """Record ``stamp_ns`` on ``stream``; on a jump back, (previous stamp, keep_until_ns) for ``restart``."""
        previous = self._last.get(stream)
        if previous is None or stamp_ns >= previous - self.tolerance_ns:
            self._last[stream] = max(stamp_ns, previous if previous is not None else stamp_ns)
            return None
        self._last[stream] = stamp_ns
        return previous, stamp_ns + max(self.slop_ns, (previous - stamp_ns) // 2)
