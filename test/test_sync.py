"""ApproxTimeSynchronizer: in-order, out-of-order, duplicates, rates, slop boundary, overflow, reset, restart."""

from __future__ import annotations

import pytest

from nmr.data.sync import ApproxTimeSynchronizer, TimeLines

MS = 1_000_000


def feed(sync: ApproxTimeSynchronizer, events: list[tuple[int, int]]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for stream, stamp in events:
        out += sync.add(stream, stamp, (stream, stamp))
    return out


def stamps(sets):
    return [tuple(item[1] for item in s) for s in sets]


def test_equal_rates_in_order():
    sync = ApproxTimeSynchronizer(2, slop_ns=5 * MS)
    events = []
    for k in range(5):
        events += [(0, k * 33 * MS), (1, k * 33 * MS + 2 * MS)]
    got = stamps(feed(sync, events))
    assert got == [(k * 33 * MS, k * 33 * MS + 2 * MS) for k in range(5)]
    assert sync.matched == 5 and sync.dropped == [0, 0]


def test_single_stream_passes_through():
    sync = ApproxTimeSynchronizer(1, slop_ns=0)
    assert stamps(feed(sync, [(0, 3), (0, 5)])) == [(3,), (5,)]


def test_different_rates_each_slow_message_gets_its_nearest_fast_one():
    # RGB at 30 Hz (stream 0), LWIR at 9 Hz (stream 1), LWIR offset by 4 ms
    slop = 10 * MS
    sync = ApproxTimeSynchronizer(2, slop_ns=slop, queue_size=20)
    rgb = [round(k * 1e9 / 30) for k in range(31)]
    lwir = [round(k * 1e9 / 9) + 4 * MS for k in range(9)]
    events = sorted([(0, s) for s in rgb] + [(1, s) for s in lwir], key=lambda e: e[1])
    got = stamps(feed(sync, events))
    expected = []
    for t in lwir:
        nearest = min(rgb, key=lambda s: abs(s - t))
        if abs(nearest - t) <= slop:
            expected.append((nearest, t))
    assert 3 <= len(expected) < len(lwir)  # the case is not trivial
    assert got == expected
    assert sync.dropped[1] == len(lwir) - len(expected)
    assert sync.dropped[0] + sync.pending(0) == len(rgb) - len(expected)


def test_out_of_order_stamps_are_paired():
    sync = ApproxTimeSynchronizer(2, slop_ns=3 * MS)
    # stream 0 delivers 20 before 10; stream 1 arrives later
    got = stamps(feed(sync, [(0, 20 * MS), (0, 10 * MS), (1, 11 * MS), (1, 21 * MS)]))
    assert got == [(10 * MS, 11 * MS), (20 * MS, 21 * MS)]
    assert sync.dropped == [0, 0]


def test_mutual_best_prefers_closer_queued_pivot():
    sync = ApproxTimeSynchronizer(2, slop_ns=5 * MS)
    # both A messages are queued before B@4: B@4 must go with A@3, A@0 is dropped
    got = stamps(feed(sync, [(0, 0), (0, 3 * MS), (1, 4 * MS)]))
    assert got == [(3 * MS, 4 * MS)]
    assert sync.dropped == [1, 0]


def test_duplicates_dropped_and_counted():
    sync = ApproxTimeSynchronizer(2, slop_ns=MS)
    got = feed(sync, [(0, 100), (0, 100), (1, 100), (1, 100), (0, 100)])
    assert stamps(got) == [(100, 100)]
    # one duplicate while queued on stream 0, one of the used stamp on each stream
    assert sync.duplicates == [2, 1]
    assert sync.dropped == [2, 1]


def test_slop_boundary_is_inclusive():
    sync = ApproxTimeSynchronizer(2, slop_ns=5)
    assert stamps(feed(sync, [(0, 100), (1, 105)])) == [(100, 105)]
    sync = ApproxTimeSynchronizer(2, slop_ns=5)
    assert feed(sync, [(0, 100), (1, 106)]) == []
    assert sync.dropped == [1, 0]  # the pivot can never match now
    assert stamps(feed(sync, [(0, 107)])) == [(107, 106)]


def test_three_streams():
    sync = ApproxTimeSynchronizer(3, slop_ns=4)
    got = stamps(feed(sync, [(0, 10), (1, 12), (2, 30), (0, 31), (1, 29)]))
    assert got == [(31, 29, 30)]
    assert sync.dropped == [1, 1, 0]


def test_queue_overflow_drops_oldest():
    sync = ApproxTimeSynchronizer(2, slop_ns=1, queue_size=3)
    feed(sync, [(0, s) for s in (10, 20, 30, 40, 50)])
    assert sync.pending(0) == 3 and sync.dropped == [2, 0]
    assert stamps(feed(sync, [(1, 10)])) == []  # 10 was dropped by the overflow
    assert stamps(feed(sync, [(1, 30)])) == [(30, 30)]


def test_stale_message_after_match_is_dropped_and_reset_recovers():
    sync = ApproxTimeSynchronizer(2, slop_ns=2)
    assert stamps(feed(sync, [(0, 100), (1, 100)])) == [(100, 100)]
    # time jumps backwards (bag restarted): without reset, old stamps are dropped
    assert feed(sync, [(0, 10), (1, 10)]) == []
    assert sync.dropped == [1, 1]
    sync.reset()
    assert stamps(feed(sync, [(0, 10), (1, 11)])) == [(10, 11)]
    assert sync.matched == 2 and sync.dropped == [1, 1]


def test_restart_keeps_the_partners_frames_of_the_new_time_line():
    sync = ApproxTimeSynchronizer(2, slop_ns=2)
    assert stamps(feed(sync, [(0, 100), (1, 100)])) == [(100, 100)]
    # stream 0 jumps back to 10 first; stream 1 still delivers an old frame (105), then jumps too
    sync.restart(0, keep_until_ns=50)
    assert feed(sync, [(0, 10), (1, 105)]) == []      # 10 finds no partner: dropped unpaired
    assert sync.dropped == [1, 0]
    sync.restart(1, keep_until_ns=50)                  # stream 1 jumped back to 11: 10 gets its chance
    assert sync.pending(0) == 1 and sync.pending(1) == 0 and sync.dropped == [0, 1]  # 105 is gone
    assert stamps(feed(sync, [(1, 11)])) == [(10, 11)]


def test_restart_forgets_the_jumped_stream_and_the_partners_old_frames():
    sync = ApproxTimeSynchronizer(2, slop_ns=2)
    feed(sync, [(0, 100), (0, 110), (1, 200)])
    sync.restart(0, keep_until_ns=50)
    assert sync.pending(0) == 0 and sync.pending(1) == 0 and sync.dropped == [2, 1]
    assert stamps(feed(sync, [(0, 10), (1, 10)])) == [(10, 10)]
    with pytest.raises(IndexError):
        sync.restart(2, 0)


def test_time_lines_report_a_jump_and_the_new_time_line_s_horizon():
    lines = TimeLines(slop_ns=20)
    assert lines.observe('rgb', 1000) is None and lines.observe('rgb', 1000) is None
    assert lines.observe('lwir', 5) is None                     # streams are independent
    assert lines.observe('rgb', 990) == (1000, 990 + 20)        # a small jump: at least the slop
    assert lines.observe('rgb', 100) == (990, 100 + 445)        # half-way back to the old time line
    tolerant = TimeLines(slop_ns=20, tolerance_ns=50)
    tolerant.observe(0, 1000)
    assert tolerant.observe(0, 960) is None                     # late, not a jump; the newest stays 1000
    assert tolerant.observe(0, 940) == (1000, 940 + 30)          # beyond the tolerance: a jump


def test_bad_arguments():
    with pytest.raises(ValueError):
        ApproxTimeSynchronizer(0, 1)
    with pytest.raises(ValueError):
        ApproxTimeSynchronizer(2, -1)
    with pytest.raises(IndexError):
        ApproxTimeSynchronizer(2, 1).add(2, 0, None)
