"""Bags written by BagWriter (mcap and sqlite3) and read back; bag errors; the lazy pair dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from nmr.data.bag_writer import BagWriter, default_typestore, make_message
from nmr.data.encodings import image_to_numpy, stamp_ns
from nmr.errors import BagError

STORAGES = ['mcap', 'sqlite3']


@pytest.mark.parametrize('storage', STORAGES)
def test_writer_round_trip_with_rosbags(tmp_path: Path, storage: str):
    depth = (np.arange(12, dtype=np.uint16) * 300).reshape(3, 4)
    rgb = np.random.default_rng(0).integers(0, 255, (3, 4, 3), dtype=np.uint8)
    bag = tmp_path / 'b'
    with BagWriter(bag, storage=storage) as w:
        w.write_image('/depth', 1_000_000_005, 'depth_frame', depth, '16UC1', record_ns=2_000_000_000)
        w.write_image('/rgb', 1_000_000_006, 'rgb_frame', rgb, 'rgb8')
        w.write_camera_info(
            '/rgb/info', 1_000_000_006, 'rgb_frame', [[5, 0, 2], [0, 5, 1.5], [0, 0, 1]], (4, 3)
        )
        w.write_diagnostics(7, [{'name': 'n', 'level': 2, 'message': 'hot', 'values': {'t': 1.5}}])
        w.write_clock(1_000_000_000)
        w.write('/s', 'std_msgs/msg/String', 9, {'data': 'hello'})
    assert w.counts == {'/depth': 1, '/rgb': 1, '/rgb/info': 1, '/diagnostics': 1, '/clock': 1, '/s': 1}
    seen = {}
    with AnyReader([bag]) as reader:
        for conn, record_ns, raw in reader.messages():
            seen[conn.topic] = (record_ns, reader.deserialize(raw, conn.msgtype))
    rec, msg = seen['/depth']
    assert rec == 2_000_000_000 and stamp_ns(msg.header) == 1_000_000_005
    assert msg.header.frame_id == 'depth_frame' and msg.encoding == '16UC1'
    np.testing.assert_array_equal(image_to_numpy(msg), depth)
    rec, msg = seen['/rgb']
    assert rec == 1_000_000_006  # record time defaults to the stamp
    np.testing.assert_array_equal(image_to_numpy(msg), rgb)
    info = seen['/rgb/info'][1]
    assert (info.width, info.height) == (4, 3) and info.k[2] == 2 and info.p[3] == 0 and len(info.d) == 5
    diag = seen['/diagnostics'][1]
    assert diag.status[0].message == 'hot' and diag.status[0].values[0].value == '1.5'
    assert stamp_ns(seen['/clock'][1].clock) == 1_000_000_000
    assert seen['/s'][1].data == 'hello'


def test_writer_refuses_existing_and_overwrites_only_bags(tmp_path: Path):
    bag = tmp_path / 'b'
    with BagWriter(bag) as w:
        w.write_clock(1)
    with pytest.raises(BagError, match='already exists'):
        BagWriter(bag).open()
    with BagWriter(bag, overwrite=True) as w:
        w.write_clock(2)
    other = tmp_path / 'notabag'
    other.mkdir()
    with pytest.raises(BagError, match='not a bag'):
        BagWriter(other, overwrite=True).open()
    assert other.is_dir()
    with pytest.raises(BagError, match='storage'):
        BagWriter(tmp_path / 'c', storage='zip')
    with pytest.raises(BagError, match='does not exist'):
        BagWriter(tmp_path / 'missing' / 'c').open()


def test_make_message_defaults_and_errors():
    ts = default_typestore()
    msg = make_message(ts, 'sensor_msgs/msg/CameraInfo', {'width': 3})
    assert msg.width == 3 and msg.k.shape == (9,) and msg.header.frame_id == ''
    with pytest.raises(ValueError, match='no field'):
        make_message(ts, 'std_msgs/msg/String', {'text': 'x'})
    with pytest.raises(BagError, match='unknown message type'):
        make_message(ts, 'Image', {})


# ---- reading ------------------------------------------------------------------------------------------
from nmr.data.bag_reader import (  # noqa: E402
    BagPairDataset,
    count_messages,
    iter_images,
    list_topics,
    open_bag,
    raw_header_stamp,
    synchronized_pairs,
    val_blocks,
)

RGB, LWIR, DEPTH = '/cam/rgb', '/cam/lwir', '/cam/depth'
MS = 1_000_000
T0 = 1_700_000_000 * 10**9


def rgb_frame(k: int) -> np.ndarray:
    """A tiny RGB frame that encodes its index k (for checking which frame came back)."""
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = k % 256
    img[..., 1] = 7
    return img


def lwir_frame(k: int) -> np.ndarray:
    return np.full((3, 5), 1000 + k, np.uint16)


def write_rig(
    bag: Path, storage: str = 'mcap', seconds: float = 4.0, gt: bool = True, split_topics: Path | None = None
) -> list[tuple[int, int]]:
    """RGB at 10 Hz (bgr8), LWIR at 5 Hz stamped 3 ms later but recorded 40 ms late; returns the expected
    (rgb index, lwir index) pairs."""
    expected = []
    rgb_writer = BagWriter(bag, storage=storage)
    lwir_writer = BagWriter(split_topics, storage=storage) if split_topics else rgb_writer
    with rgb_writer:
        if split_topics:
            lwir_writer.open()
        for k in range(int(seconds * 10)):
            rgb_writer.write_image(
                RGB, T0 + k * 100 * MS, 'rgb', np.ascontiguousarray(rgb_frame(k)[..., ::-1]), 'bgr8'
            )
            if k % 2 == 0:
                stamp = T0 + k * 100 * MS + 3 * MS
                lwir_writer.write_image(
                    LWIR, stamp, 'lwir', lwir_frame(k), 'mono16', record_ns=stamp + 40 * MS
                )
                if gt:
                    flow = np.full((3, 5, 2), k, np.float32)
                    valid = np.full((3, 5), 255, np.uint8)
                    valid[0, 0] = 0
                    rgb_writer.write_image('/nmr_gt/rgb_lwir/flow', stamp, 'lwir', flow, '32FC2')
                    rgb_writer.write_image('/nmr_gt/rgb_lwir/valid', stamp, 'lwir', valid, 'mono8')
                expected.append((k, k))
        if split_topics:
            lwir_writer.close()
    return expected


@pytest.mark.parametrize('storage', STORAGES)
def test_list_iter_and_sync_pairs(tmp_path: Path, storage: str):
    bag = tmp_path / 'rig'
    expected = write_rig(bag, storage, seconds=1.0)
    topics = list_topics(bag)
    assert topics[RGB] == topics[LWIR] == 'sensor_msgs/msg/Image'
    assert count_messages(bag, [RGB, LWIR]) == 15
    got = [(t, rec, arr.copy(), enc) for t, rec, arr, enc, _h in iter_images([bag], [RGB, LWIR])]
    assert [g[1] for g in got] == sorted(g[1] for g in got)  # record order
    assert len(got) == 15 and got[0][0] == RGB and got[0][3] == 'bgr8'
    np.testing.assert_array_equal(got[0][2], rgb_frame(0)[..., ::-1])
    pairs = list(synchronized_pairs(bag, RGB, LWIR, slop_ns=10 * MS))
    assert [(p.moving[0, 0, 0], int(p.fixed[0, 0]) - 1000) for p in pairs] == expected
    assert pairs[0].fixed_encoding == 'mono16' and pairs[0].moving.shape == (4, 6, 3)
    assert pairs[0].fixed_stamp_ns - pairs[0].moving_stamp_ns == 3 * MS


def test_raw_header_stamp_matches_deserialised(tmp_path: Path):
    bag = tmp_path / 'b'
    with BagWriter(bag) as w:
        w.write_image('/x', 12_345_678_901_234, 'f', np.zeros((2, 2), np.uint8), 'mono8')
    with open_bag(bag) as reader:
        for conn, _t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            assert raw_header_stamp(raw) == stamp_ns(msg.header) == 12_345_678_901_234


@pytest.mark.parametrize('storage', STORAGES)
def test_bag_pair_dataset_lazy_items_and_ground_truth(tmp_path: Path, storage: str):
    bag = tmp_path / 'rig'
    expected = write_rig(bag, storage, seconds=4.0)
    ds = BagPairDataset(bag, 'rgb_lwir', {'rgb': RGB, 'lwir': LWIR}, split='all', slop_s=0.01)
    assert len(ds) == len(expected) == 20 and ds.has_ground_truth
    for i in (0, 7, len(ds) - 1, -1):
        item = ds[i]
        k_rgb, k_lwir = expected[i]
        np.testing.assert_array_equal(item.moving, rgb_frame(k_rgb))  # bgr8 -> RGB
        np.testing.assert_array_equal(item.fixed, lwir_frame(k_lwir))
        assert item.fixed_kind == 'lwir' and item.fixed_encoding == 'mono16'
        assert item.stamp_ns == T0 + k_lwir * 100 * MS + 3 * MS
        assert (
            item.gt_flow is not None and item.gt_flow.shape == (3, 5, 2) and item.gt_flow[0, 0, 0] == k_lwir
        )
        assert item.valid is not None and item.valid.dtype == bool and item.valid.sum() == 14
        assert item.moving.flags.writeable and item.fixed.flags.writeable
    with pytest.raises(IndexError):
        ds[len(ds)]
    # a pickled copy (a DataLoader worker) opens its own reader
    import pickle

    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[3].fixed, ds[3].fixed)
    clone.close()
    ds.close()


def test_bag_pair_dataset_split_by_time_blocks(tmp_path: Path):
    bag = tmp_path / 'rig'
    write_rig(bag, seconds=10.0, gt=False)
    topics = {'moving': RGB, 'fixed': LWIR}
    kw = {'val_fraction': 0.2, 'block_s': 1.0, 'slop_s': 0.01}
    train = BagPairDataset(bag, 'rgb_lwir', topics, split='train', **kw)
    val = BagPairDataset(bag, 'rgb_lwir', topics, split='val', **kw)
    assert not train.has_ground_truth and train[0].gt_flow is None
    assert train.n_blocks == 10 and train.val_blocks == {2, 7}
    assert len(train) + len(val) == train.total_pairs == 50 and len(val) == 10
    t_stamps = {train[i].stamp_ns for i in range(len(train))}
    v_stamps = [val[i].stamp_ns for i in range(len(val))]
    assert not t_stamps & set(v_stamps)
    # validation frames come in whole 1 s blocks, not scattered
    assert {(s - v_stamps[0]) // 10**9 for s in v_stamps} <= {0, 5}
    assert val.summary()['val_blocks'] == [2, 7] and val.summary()['pairs'] == 10


def test_val_blocks_spread():
    assert val_blocks(10, 0.2) == {2, 7}
    assert val_blocks(3, 0.2) == {2}
    assert val_blocks(4, 0.0) == set()
    assert val_blocks(4, 1.0) == {0, 1, 2, 3}
    with pytest.raises(BagError):
        val_blocks(4, 1.5)


def test_topics_split_over_two_bags_are_merged(tmp_path: Path):
    expected = write_rig(tmp_path / 'a', seconds=1.0, gt=False, split_topics=tmp_path / 'b')
    ds = BagPairDataset([tmp_path / 'a', tmp_path / 'b'], 'rgb_lwir', {'rgb': RGB, 'lwir': LWIR}, split='all')
    assert len(ds) == len(expected)
    np.testing.assert_array_equal(ds[2].fixed, lwir_frame(expected[2][1]))
    ds.close()


@pytest.mark.parametrize('storage', STORAGES)
def test_bag_errors(tmp_path: Path, storage: str):
    with pytest.raises(BagError, match='does not exist'):
        list_topics(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='not a rosbag2 bag'):
        list_topics(tmp_path / 'empty')
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(BagError, match='cannot read bag'):
        list_topics(tmp_path / 'notes.txt')
    bag = tmp_path / 'rig'
    write_rig(bag, storage, seconds=1.0, gt=False)
    # the storage file itself is accepted as the bag
    data_file = next(p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3'))
    assert RGB in list_topics(data_file)
    with pytest.raises(BagError, match=r'/cam/depth is not in bag.*/cam/lwir'):
        BagPairDataset(bag, 'rgb_depth', {'rgb': RGB, 'depth': DEPTH})
    with pytest.raises(BagError, match='/nope'):
        list(iter_images(bag, ['/nope']))
    with pytest.raises(BagError, match='rgb_thermal'):
        BagPairDataset(bag, 'rgb_thermal', {'rgb': RGB})
    with pytest.raises(BagError, match='"lwir"'):
        BagPairDataset(bag, 'rgb_lwir', {'rgb': RGB})
    # corrupt: truncate the storage file
    raw = data_file.read_bytes()
    data_file.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BagError, match=r'corrupt|truncated'):
        BagPairDataset(bag, 'rgb_lwir', {'rgb': RGB, 'lwir': LWIR})


def _mcap_string(body: bytes, at: int) -> tuple[str, int]:
    import struct

    n = struct.unpack_from('<I', body, at)[0]
    return body[at + 4:at + 4 + n].decode(), at + 4 + n


def _mcap_channels(path: Path) -> dict[str, dict[str, str]]:
    """topic -> channel metadata, parsed from the MCAP file's top-level Channel records (op 0x04) with
    nothing but the MCAP spec (an independent reader: no rosbags)."""
    import struct

    data = path.read_bytes()
    assert data[:8] == b'\x89MCAP0\r\n'
    channels: dict[str, dict[str, str]] = {}
    pos = 8
    while pos + 9 <= len(data) - 8:
        op, length = data[pos], struct.unpack_from('<Q', data, pos + 1)[0]
        body = data[pos + 9:pos + 9 + length]
        pos += 9 + length
        if op != 0x04:
            continue
        topic, at = _mcap_string(body, 4)  # after channel id (u16) and schema id (u16)
        _encoding, at = _mcap_string(body, at)
        end = at + 4 + struct.unpack_from('<I', body, at)[0]
        at += 4
        meta = {}
        while at < end:
            key, at = _mcap_string(body, at)
            meta[key], at = _mcap_string(body, at)
        channels[topic] = meta
    return channels


def test_mcap_channels_carry_offered_qos_and_the_type_hash_like_rosbag2(tmp_path: Path):
    import yaml

    bag = tmp_path / 'b'
    with BagWriter(bag) as w:
        w.write_image('/nmr/rgb_lwir/flow', 5, 'lwir', np.zeros((2, 2, 2), np.float32), '32FC2')
    channels = _mcap_channels(bag / 'b.mcap')
    meta = channels['/nmr/rgb_lwir/flow']
    assert meta['topic_type_hash'] == default_typestore().hash_rihs01('sensor_msgs/msg/Image')
    assert meta['topic_type_hash'].startswith('RIHS01_')
    qos = yaml.safe_load(meta['offered_qos_profiles'])
    assert qos[0]['reliability'] in (1, 'reliable') and qos[0]['durability'] in (2, 'volatile'), qos
    with AnyReader([bag]) as reader:  # rosbags still reads it, QoS included
        conn = reader.connections[0]
        assert conn.ext.offered_qos_profiles and conn.ext.offered_qos_profiles[0].depth == 10


def test_a_bag_whose_stamps_restart_keeps_every_pair_of_both_sessions(tmp_path: Path):
    """Two sessions in one bag (a camera clock reset) whose streams jump at different moments: session 2's
    first RGB frame is recorded before session 1's last LWIR frame. The pair readers restart their
    synchroniser per stream (nmr.data.sync.TimeLines) and keep every pair of session 2; resetting
    everything at each jump lost its first pair. Session 1's last pair is given up by design: its RGB frame
    was forgotten when the RGB stream jumped (a restart keeps the new time line, not the old one)."""
    bag = tmp_path / 'two_sessions'
    base = 1_700_000_000 * 1000 * MS
    frames = []  # (stamp, topic, k) in record order
    for session, start in enumerate((base + 100_000 * MS, base)):  # the second starts 100 s EARLIER
        for k in range(4):
            t = start + k * 100 * MS
            frames += [(t, RGB, k + 4 * session), (t + 3 * MS, LWIR, k + 4 * session)]
    late = frames.pop(7)                 # session 1's last LWIR frame ...
    frames.insert(8, late)               # ... recorded after session 2's first RGB frame
    with BagWriter(bag) as w:
        for i, (t, topic, k) in enumerate(frames):
            if topic == RGB:
                w.write_image(RGB, t, 'c', np.full((4, 6, 3), k, np.uint8), 'rgb8', record_ns=base + i * MS)
            else:
                w.write_image(LWIR, t, 'l', np.full((4, 6), 1000 + k, np.uint16), 'mono16', record_ns=base + i * MS)
    pairs = list(synchronized_pairs(bag, RGB, LWIR, slop_ns=10 * MS))
    got = [(int(p.moving[0, 0, 0]), int(p.fixed[0, 0]) - 1000) for p in pairs]
    assert got == [(k, k) for k in (0, 1, 2, 4, 5, 6, 7)]
    ds = BagPairDataset(bag, 'rgb_lwir', {'rgb': RGB, 'lwir': LWIR}, split='all', slop_s=0.01)
    assert len(ds) == 7
