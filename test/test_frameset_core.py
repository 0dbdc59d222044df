"""The frame-set core (nmr.pipeline.core) and its two adapters: register_node and `nmr register-bag`.

The equivalence tests feed the same frame sequences (in order, interleaved at other rates, topics
delivered in other orders, time jumps reaching either stream first) through the node's message callback
and through a real bag that `register_bag` registers, and require identical sets. Frames carry their
identity in their content (RGB colour, frame_id), so a set can be told from the bag's outputs alone.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nmr.domain import PAIR_FIXED_KIND
from nmr.pipeline.core import Frame, FrameSetCore, PairSet
from nmr.ros.testing import make_tiny_model

SECOND = 1_000_000_000
MS = 1_000_000
BASE_NS = 1_700_000_000 * SECOND
SLOP_NS = 20 * MS
PAIRS = tuple(PAIR_FIXED_KIND)
HW = (12, 16)
ENCODINGS = {'rgb': 'rgb8', 'lwir': 'mono16', 'depth': '16UC1'}

Delivery = list[tuple[str, int]]
"""(stream, stamp ns) in delivery order; the i-th frame of a sequence has frame_id f'{stream}{i}'."""
SetKey = tuple[str, str, str]
"""(pair, RGB frame_id, fixed frame_id)"""


def _block(start_s: float, n: int, rate_hz: float, streams: tuple[str, ...] = ('rgb', 'lwir', 'depth'),
           offsets_ms: dict[str, float] | None = None) -> Delivery:
    """`n` frames per stream at `rate_hz` from `start_s`, delivered in stamp order (streams interleaved)."""
    offsets = {'rgb': 0.0, 'lwir': 3.0, 'depth': -2.0, **(offsets_ms or {})}
    frames = [(s, BASE_NS + int((start_s + k / rate_hz) * SECOND + offsets[s] * MS))
              for k in range(n) for s in streams]
    return sorted(frames, key=lambda f: f[1])


def _stream_first(delivery: Delivery, order: tuple[str, ...]) -> Delivery:
    """The same frames, each stream's delivered in a burst, streams in `order` (each keeps its own order)."""
    return [f for s in order for f in delivery if f[0] == s]


def _late_old_frame() -> Delivery:
    """RGB jumps back; an old LWIR frame still arrives; then LWIR jumps: the first new RGB frame must pair."""
    new = _stream_first(_block(2.0, 2, 10.0), ('rgb', 'lwir', 'depth'))
    return [*_block(10.0, 2, 10.0), new[0], ('lwir', BASE_NS + 10 * SECOND + 203 * MS), *new[1:]]


SEQUENCES: dict[str, Delivery] = {
    'in order': _block(0.0, 5, 10.0),
    'interleaved, lwir at half rate': sorted(_block(0.0, 6, 10.0, ('rgb', 'depth')) + _block(0.0, 3, 5.0, ('lwir',)),
                                             key=lambda f: f[1]),
    'topics in other orders': _stream_first(_block(0.0, 4, 10.0), ('lwir', 'depth', 'rgb')),
    'rgb jumps back first': _block(10.0, 3, 10.0) + _stream_first(_block(2.0, 3, 10.0), ('rgb', 'lwir', 'depth')),
    'fixed streams jump back first': (_block(10.0, 3, 10.0)
                                      + _stream_first(_block(2.0, 3, 10.0), ('depth', 'lwir', 'rgb'))),
    'old frame late after a jump': _late_old_frame(),
}


def _array(stream: str, index: int) -> np.ndarray:
    """RGB: a flat colour that names the frame (survives registration); others: any texture."""
    if stream == 'rgb':
        return np.full((*HW, 3), 10 + 3 * index, np.uint8)
    rng = np.random.default_rng(index)
    return rng.integers(500, 4000, HW).astype(np.uint16)


def _frames(delivery: Delivery) -> Iterator[tuple[str, int, str, np.ndarray]]:
    for i, (stream, stamp) in enumerate(delivery):
        yield stream, stamp, f'{stream}{i}', _array(stream, i)


def _key(pset: PairSet) -> SetKey:
    return (pset.pair, pset.rgb.header.frame_id, pset.fixed.header.frame_id)


# -- the core alone ---------------------------------------------------------------------------------------


def _core_sets(delivery: Delivery, keep: str = 'all') -> list[SetKey]:
    core = FrameSetCore(PAIRS, SLOP_NS, 10, keep)  # type: ignore[arg-type]
    sets: list[SetKey] = []
    for stream, stamp, frame_id, arr in _frames(delivery):
        sets += [_key(s) for s in core.add(Frame(stream, stamp, arr, ENCODINGS[stream],
                                                 argparse.Namespace(frame_id=frame_id))).sets]
    return sets


def test_in_order_frames_make_one_set_per_pair_and_stamp() -> None:
    sets = _core_sets(SEQUENCES['in order'])
    assert len(sets) == 10 and {p for p, _r, _f in sets} == set(PAIRS)


@pytest.mark.parametrize('name', ['rgb jumps back first', 'fixed streams jump back first',
                                  'old frame late after a jump'])
def test_a_time_jump_in_either_stream_loses_no_set_of_the_new_time_line(name: str) -> None:
    delivery = SEQUENCES[name]
    old = {f'{s}{i}' for i, (s, t) in enumerate(delivery) if t >= BASE_NS + 10 * SECOND}
    sets = _core_sets(delivery)
    new = [k for k in sets if k[1] not in old]
    assert len(new) == 2 * (len(delivery) - len(old)) // 3, sets


def test_a_jump_restarts_only_the_pairs_using_that_stream() -> None:
    core = FrameSetCore(PAIRS, SLOP_NS, 10, 'all')
    header = argparse.Namespace(frame_id='x')
    frame = np.zeros(HW, np.uint16)
    for t in (10, 11):
        core.add(Frame('lwir', BASE_NS + t * SECOND, frame, 'mono16', header))
    jump = core.add(Frame('depth', BASE_NS + 12 * SECOND, frame, '16UC1', header)).jump
    assert jump is None
    jump = core.add(Frame('depth', BASE_NS + 2 * SECOND, frame, '16UC1', header)).jump
    assert jump is not None and jump.pairs == ('rgb_depth',) and jump.back_s == pytest.approx(10.0)
    # rgb_lwir kept its queued LWIR frame at 11 s: an RGB frame there still pairs with it
    sets = core.add(Frame('rgb', BASE_NS + 11 * SECOND, np.zeros((*HW, 3), np.uint8), 'rgb8', header)).sets
    assert [s.pair for s in sets] == ['rgb_lwir']


def test_keep_newest_makes_a_waiting_set_stale_and_keep_all_keeps_every_set() -> None:
    delivery = SEQUENCES['in order']
    for keep, expected in (('newest', 2), ('all', 10)):
        core = FrameSetCore(PAIRS, SLOP_NS, 10, keep)  # type: ignore[arg-type]
        for stream, stamp, frame_id, arr in _frames(delivery):
            core.add(Frame(stream, stamp, arr, ENCODINGS[stream], argparse.Namespace(frame_id=frame_id)))
        taken = core.take()
        assert len(taken) == expected and core.take() == []
        if keep == 'newest':
            assert {s.pair for s in taken} == set(PAIRS)
            assert all(core.counts(p).stale == 4 and core.counts(p).synchronised == 5 for p in PAIRS)


@pytest.fixture(scope='module')
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp('core_models')
    return {p: make_tiny_model(folder / f'{p}.pt', p, seed=i) for i, p in enumerate(PAIRS)}


def test_fused_outputs_come_once_per_rgb_frame_both_pairs_registered(models: dict[str, Path]) -> None:
    from nmr.pipeline.outputs import PairProcessor
    from nmr.pipeline.settings import create_registrar, validate

    settings = validate({'backend': 'torch', 'device': 'cpu'})
    processors = {p: PairProcessor(create_registrar(models[p], settings, p, log=lambda _t: None), p)
                  for p in PAIRS}
    core = FrameSetCore(PAIRS, SLOP_NS, 10, 'all')
    fused = []
    for stream, stamp, frame_id, arr in _frames(SEQUENCES['in order'][:6]):  # two stamps, all streams
        core.add(Frame(stream, stamp, arr, ENCODINGS[stream], argparse.Namespace(frame_id=frame_id)))
        for pset in core.take():
            core.register(pset, processors[pset.pair], ['registered'])
            fused.append(core.fuse())
        fused.append(core.fuse())
    made = [f for f in fused if f is not None]
    assert len(made) == 2, fused
    assert [f.lwir.header.frame_id for f in made] == ['lwir2', 'lwir5']
    depth = made[0].outputs['fused/depth'][0]
    assert depth.shape == HW and depth.dtype == np.float32


# -- the two adapters --------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def quiet_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """register_node in this process, worker stopped: `_on_image` only feeds the core (no DDS timing)."""
    pytest.importorskip('rclpy')
    from nmr.ros.testing import in_process_node

    with in_process_node(tmp_path_factory.mktemp('quiet_node'), log_throttle_s=60.0) as node:
        yield node


def _node_sets(node: Any, delivery: Delivery) -> tuple[list[SetKey], int]:
    from std_msgs.msg import Header

    from nmr.ros.convert import time_from_ns, to_image_msg

    s = node.settings
    node.core = FrameSetCore(s.pairs, s.sync_slop_ns, s.sync_queue_size, keep='newest')
    sets: list[SetKey] = []
    jumps = 0
    for stream, stamp, frame_id, arr in _frames(delivery):
        added = node._on_image(stream, to_image_msg(arr, ENCODINGS[stream],
                                                    Header(stamp=time_from_ns(stamp), frame_id=frame_id)))
        assert added is not None
        sets += [_key(p) for p in added.sets]
        jumps += added.jump is not None
    return sets, jumps


def _bag_sets(delivery: Delivery, models: dict[str, Path], folder: Path) -> tuple[list[SetKey], int]:
    """Write the delivery as a bag (record order = delivery order), register it, read the sets back."""
    from nmr.data.bag_reader import iter_images
    from nmr.data.bag_writer import BagWriter
    from nmr.pipeline.register_bag import add_arguments, register_bag
    from nmr.pipeline.settings import validate

    topics = {s: validate({}).inputs[s].topic for s in ENCODINGS}
    with BagWriter(folder / 'in') as writer:
        for i, (stream, stamp, frame_id, arr) in enumerate(_frames(delivery)):
            writer.write_image(topics[stream], stamp, frame_id, arr, ENCODINGS[stream], record_ns=BASE_NS + i)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(folder / 'in'), '--out', str(folder / 'out'), '--quiet', '--backend', 'torch',
                              '--model-rgb-lwir', str(models['rgb_lwir']), '--model-rgb-depth',
                              str(models['rgb_depth']), '--set', 'outputs=[registered]'])
    result = register_bag(args)
    assert not result['interrupted']
    rgb_ids = {10 + 3 * i: f'rgb{i}' for i, (s, _t) in enumerate(delivery) if s == 'rgb'}
    sets: list[SetKey] = []
    for topic, _rec, arr, _enc, header in iter_images(folder / 'out', [f'/nmr/{p}/registered' for p in PAIRS]):
        values, counts = np.unique(arr[..., 0][arr[..., 0] > 0], return_counts=True)
        colour = int(values[np.argmax(counts)])  # interior pixels keep the flat colour exactly
        sets.append((topic.split('/')[2], rgb_ids[colour], header.frame_id))
    return sets, result['time_jumps']


@pytest.mark.ros
@pytest.mark.parametrize('name', list(SEQUENCES))
def test_node_and_register_bag_form_identical_sets(name: str, quiet_node: Any, models: dict[str, Path],
                                                   tmp_path: Path) -> None:
    delivery = SEQUENCES[name]
    from_node, node_jumps = _node_sets(quiet_node, delivery)
    from_bag, bag_jumps = _bag_sets(delivery, models, tmp_path)
    assert from_node, f'{name}: no set formed'
    assert sorted(from_node) == sorted(from_bag), (name, from_node, from_bag)
    assert sorted(from_node) == sorted(_core_sets(delivery))
    assert node_jumps == bag_jumps == (3 if 'jump' in name else 0)
