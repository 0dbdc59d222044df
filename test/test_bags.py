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
