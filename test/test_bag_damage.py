"""Truncated, incomplete and corrupt bags; register-bag interrupted or out of disk (issue 15, points 2 and 3).

Policy under test: `nmr register-bag`, `nmr train --bag` and `nmr play` either process every readable
message and say how many were lost, or stop with one line naming the file and what to do (a cut mcap:
`nmr recover-bag`); never a traceback, never a silent partial result. An interrupted register-bag leaves a
valid bag holding every set registered so far, marked partial; a failed write leaves nothing.
One-line errors are checked through `nmr.cli.main.main` in this process; signals and file-size limits
need a real subprocess.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from nmr.cli.main import main
from nmr.data.bag_writer import BagWriter
from nmr.domain import PAIRS
from nmr.ros.testing import INPUT_TOPICS, TINY_TRAIN, make_tiny_model


@pytest.fixture(scope='module')
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('damage')


def _synth(out: Path, frames: int, storage: str = 'mcap') -> Path:
    from nmr.synth.generator import SynthConfig, generate

    generate(SynthConfig(out=out, duration_s=frames / 30, seed=1, size_scale=0.1, storage=storage))
    return out


@pytest.fixture(scope='module')
def rig(folder: Path) -> Path:
    return _synth(folder / 'rig', 12)


@pytest.fixture(scope='module')
def long_rig(folder: Path) -> Path:
    return _synth(folder / 'long_rig', 45)


@pytest.fixture(scope='module')
def models(folder: Path) -> dict[str, Path]:
    return {p: make_tiny_model(folder / f'{p}.pt', p, seed=i) for i, p in enumerate(PAIRS)}


def _model_args(models: dict[str, Path]) -> list[str]:
    return ['--model-rgb-lwir', str(models['rgb_lwir']), '--model-rgb-depth', str(models['rgb_depth'])]


def _one_line(capsys: pytest.CaptureFixture[str], code: int, verb: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace('\r', '\n').splitlines() if ln.strip() and not ln.startswith('[')]
    assert code != 0 and 'Traceback' not in err, err
    errors = [ln for ln in lines if ln.startswith(f'nmr {verb}: error:')]
    assert len(errors) == 1, err
    return errors[0]


def _cut(rig: Path, dst: Path, fraction: float, keep_metadata: bool = True) -> Path:
    dst.mkdir()
    mcap = next(rig.glob('*.mcap'))
    data = mcap.read_bytes()
    (dst / mcap.name).write_bytes(data[: int(len(data) * fraction)])
    if keep_metadata:
        shutil.copy(rig / 'metadata.yaml', dst / 'metadata.yaml')
    return dst


def _messages(bag: Path) -> list[tuple[str, int, bytes]]:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


# -- point 2: truncated, incomplete, mistyped, corrupt -------------------------------------------------------


def test_a_cut_mcap_stops_every_verb_with_one_line_naming_the_file_and_recover_bag(
        long_rig: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = long_rig  # several chunks: the cut keeps whole ones, so recover-bag has something to recover
    cut = _cut(rig, tmp_path / 'cut', 0.6)
    runs = {
        'register-bag': ['register-bag', str(cut), '--out', str(tmp_path / 'out'), '--quiet', *_model_args(models)],
        'train': ['train', '--bag', str(cut), '--pair', 'rgb_lwir', '--out', str(tmp_path / 'run'),
                  *[a for s in TINY_TRAIN for a in ('--set', s)]],
        'play': ['play', str(cut), '--quiet'],
    }
    for verb, argv in runs.items():
        line = _one_line(capsys, main(argv), verb)
        assert str(cut / next(rig.glob('*.mcap')).name) in line and 'truncated' in line, line
        assert f'nmr recover-bag {cut} --out' in line, line
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('keep_metadata', [True, False], ids=['with-metadata', 'metadata-lost-too'])
def test_recover_bag_copies_every_complete_message_and_says_how_many_were_lost(
        long_rig: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        keep_metadata: bool) -> None:
    rig = long_rig  # several 1 MB chunks: the cut keeps some whole ones
    cut = _cut(rig, tmp_path / 'cut', 0.6, keep_metadata)
    out = tmp_path / 'recovered'
    assert main(['recover-bag', str(cut), '--out', str(out)]) == 0
    line = capsys.readouterr().out.strip()
    original = _messages(rig)
    recovered = _messages(out)
    n = int(re.search(r'(\d+) messages on', line).group(1))
    assert 0 < n == len(recovered) < len(original)
    if keep_metadata:
        assert f'{len(original) - n} lost (metadata.yaml announced {len(original)})' in line, line
    else:
        assert 'how many were lost is unknown' in line, line
    assert 'stopped at the file ends inside a record' in line
    # every recovered message is byte for byte one of the original's (cut in file order: a prefix)
    assert set(recovered) <= set(original)
    # and the recovered bag is a normal input again
    assert main(['register-bag', str(out), '--out', str(tmp_path / 'reg'), '--quiet', *_model_args(models)]) == 0
    assert 'synchronised sets registered' in capsys.readouterr().out


def test_an_sqlite3_bag_without_metadata_yaml_is_read_from_its_db3(
        folder: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = _synth(tmp_path / 'sql', 6, storage='sqlite3')
    assert main(['register-bag', str(bag), '--out', str(tmp_path / 'a'), '--quiet', *_model_args(models)]) == 0
    with_meta = capsys.readouterr().out
    from nmr.data.bag_reader import open_bag

    with open_bag(bag) as reader:
        images = sum(c.msgcount for c in reader.connections  # play's default: images and camera_info
                     if c.msgtype in ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo'))
    (bag / 'metadata.yaml').unlink()
    for verb, argv in {
        'register-bag': ['register-bag', str(bag), '--out', str(tmp_path / 'b'), '--quiet', *_model_args(models)],
        'play': ['play', str(bag), '--quiet', '--rate', '50'],
        'train': ['train', '--bag', str(bag), '--pair', 'rgb_lwir', '--out', str(tmp_path / 'run'),
                  *[a for s in TINY_TRAIN for a in ('--set', s)]],
    }.items():
        assert main(argv) == 0, (verb, capsys.readouterr().err)
        text = capsys.readouterr().out
        if verb == 'register-bag':
            assert text.split('->')[0] == with_meta.split('->')[0]  # same number of sets as with metadata
        if verb == 'play':
            assert f'published {images} messages' in text


def _mistyped_bag(path: Path, rig: Path) -> Path:
    """The rig's RGB and depth, but the LWIR topic recorded as CompressedImage."""
    from rosbags.highlevel import AnyReader

    with AnyReader([rig]) as reader, BagWriter(path) as writer:
        for conn, t, raw in reader.messages():
            if conn.topic == INPUT_TOPICS['lwir']:
                writer.write(conn.topic, 'sensor_msgs/msg/CompressedImage', t,
                             {'format': 'png', 'data': np.zeros(8, np.uint8)})
            elif conn.msgtype == 'sensor_msgs/msg/Image':
                writer.write_raw(conn.topic, conn.msgtype, t, raw)
    return path


def test_a_topic_of_another_type_is_one_line_naming_topic_type_and_what_to_do(
        rig: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = _mistyped_bag(tmp_path / 'mistyped', rig)
    lwir = INPUT_TOPICS['lwir']
    for verb, argv in {
        'register-bag': ['register-bag', str(bag), '--out', str(tmp_path / 'out'), '--quiet', *_model_args(models)],
        'train': ['train', '--bag', str(bag), '--pair', 'rgb_lwir', '--out', str(tmp_path / 'run'),
                  *[a for s in TINY_TRAIN for a in ('--set', s)]],
        'play': ['play', str(bag), '--topics', lwir, '/nope', '--quiet'],
    }.items():
        line = _one_line(capsys, main(argv), verb)
        if verb == 'play':
            assert '/nope' in line
            continue
        assert lwir in line and 'CompressedImage' in line and 'set' in line and 'Image topic' in line, line
    assert not (tmp_path / 'out').exists()


def test_unreadable_messages_are_skipped_and_counted_by_register_bag_train_and_play(
        rig: Path, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One message with garbage bytes and one malformed Image (short data) in an otherwise good bag."""
    from rosbags.highlevel import AnyReader

    bag = tmp_path / 'corrupt'
    lwir = INPUT_TOPICS['lwir']
    seen = 0
    with AnyReader([rig]) as reader, BagWriter(bag) as writer:
        for conn, t, raw in reader.messages():
            if conn.msgtype != 'sensor_msgs/msg/Image':
                continue
            if conn.topic == lwir:
                seen += 1
                if seen == 3:
                    raw = np.random.default_rng(0).bytes(40)                  # not CDR at all
                elif seen == 5:
                    msg = reader.deserialize(raw, conn.msgtype)
                    msg.data = msg.data[: msg.data.size // 2]                 # data shorter than step*height
                    raw = writer.typestore.serialize_cdr(msg, conn.msgtype)
            writer.write_raw(conn.topic, conn.msgtype, t, raw)
    assert main(['register-bag', str(bag), '--out', str(tmp_path / 'out'), '--quiet', '--pairs', 'rgb_lwir',
                 '--model-rgb-lwir', str(models['rgb_lwir'])]) == 0
    line = capsys.readouterr().out.strip()
    assert f'2 unreadable input messages skipped ({lwir}: 2)' in line, line
    sets = int(re.search(r'(\d+) synchronised sets', line).group(1))
    assert sets == seen - 2
    meta = yaml.safe_load((tmp_path / 'out' / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['custom_data']['nmr.register_bag'] == 'complete'

    assert main(['train', '--bag', str(bag), '--pair', 'rgb_lwir', '--out', str(tmp_path / 'run'),
                 *[a for s in TINY_TRAIN for a in ('--set', s)]]) == 0
    err = capsys.readouterr().err
    assert f'2 unreadable messages left out ({lwir}: 2)' in err and 'Traceback' not in err, err
    from nmr.models.checkpoint import read_checkpoint

    assert read_checkpoint(tmp_path / 'run' / 'best.pt').metadata.train_data['unreadable_messages'] == {lwir: 2}

    assert main(['play', str(bag), '--restamp', '--quiet', '--rate', '20']) == 0
    out = capsys.readouterr().out
    assert f'1 unreadable messages skipped ({lwir}: 1)' in out, out  # the garbage; the short Image is CDR


def test_a_user_error_raised_in_a_dataloader_worker_is_still_one_line() -> None:
    """torch re-raises a worker's exception with the worker's traceback inside its message."""
    from torch._utils import ExceptionWrapper

    from nmr.cli.main import one_line
    from nmr.errors import ImageDecodeError

    try:
        raise ImageDecodeError('mono16 image on topic /lwir: step 3 is shorter than one row')
    except ImageDecodeError:
        wrapped = ExceptionWrapper(where='in DataLoader worker process 0')
    with pytest.raises(ImageDecodeError) as info:
        wrapped.reraise()
    assert '\n' in str(info.value)  # what torch makes of it
    assert one_line(info.value) == 'mono16 image on topic /lwir: step 3 is shorter than one row'


# -- point 3: register-bag interrupted, or out of disk --------------------------------------------------------


def _nmr(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name('nmr')
    return [str(exe), *args] if exe.exists() else [sys.executable, '-m', 'nmr.cli.main', *args]


class _Stderr:
    """Collects a child's stderr on a thread (progress lines end with \\r, not \\n)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.text = ''
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for chunk in iter(lambda: proc.stderr.read1(4096), b''):  # type: ignore[union-attr]
            with self._lock:
                self.text += chunk.decode(errors='replace')

    def get(self) -> str:
        with self._lock:
            return self.text

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.get()


def test_register_bag_interrupted_by_sigint_leaves_a_readable_bag_with_every_set_so_far(
        long_rig: Path, models: dict[str, Path], tmp_path: Path) -> None:
    from nmr.ros.testing import wait_for

    out = tmp_path / 'out'
    # a large network grid slows the tiny models to a few sets per progress update (every 0.2 s): at their
    # own size the 90 sets took ~0.3 s, and the signal sometimes landed after the last one
    proc = subprocess.Popen(_nmr('register-bag', str(long_rig), '--out', str(out), *_model_args(models),
                                 '--copy-inputs', '--set', 'net_height=512', '--set', 'net_width=640'),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ))
    err = _Stderr(proc)
    try:
        wait_for(lambda: any(int(n) >= 3 for n in re.findall(r'(\d+) sets registered', err.get())), 120.0,
                 'register-bag to register 3 sets')
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = err.join()
    assert proc.returncode == 130 and 'Traceback' not in text, text
    match = re.search(r'interrupted: \S+ holds the (\d+) sets registered so far', text)
    assert match, text
    sets = int(match.group(1))
    messages = _messages(out)  # rosbags' reader opens it: summary and metadata.yaml were written
    flows = [m for m in messages if m[0].endswith('/flow')]
    assert 3 <= sets == len(flows) < 2 * 45, (sets, len(flows))
    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['custom_data']['nmr.register_bag'].startswith('partial: interrupted')


def test_register_bag_out_of_disk_is_one_line_and_leaves_no_output(
        rig: Path, models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / 'out'
    limit = 256 * 1024  # the output needs several MB

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(_nmr('register-bag', str(rig), '--out', str(out), '--quiet', *_model_args(models),
                                 '--copy-inputs'),
                            capture_output=True, text=True, timeout=300, preexec_fn=small_files,
                            env=dict(os.environ))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    assert lines[-1].startswith('nmr register-bag: error: writing') and 'File too large' in lines[-1], lines
    assert 'incomplete output was removed' in lines[-1]
    assert not out.exists()




def test_recover_bag_out_of_disk_is_one_line_and_leaves_no_output(rig: Path, tmp_path: Path) -> None:
    cut = _cut(rig, tmp_path / 'cut', 0.99)
    out = tmp_path / 'out'
    limit = 64 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(_nmr('recover-bag', str(cut), '--out', str(out)), capture_output=True, text=True,
                            timeout=300, preexec_fn=small_files, env=dict(os.environ))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith('nmr recover-bag: error: File too large'), lines
    assert not out.exists()


def test_recover_bag_is_suggested_only_when_it_can_recover_something(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 (7): a text file named .mcap was sent to `nmr recover-bag`, which found nothing to recover."""
    text = tmp_path / 'notes.mcap'
    text.write_text('not a bag\n')
    header_only = tmp_path / 'header.mcap'
    header_only.write_bytes(b'\x89MCAP0\r\n' + b'x' * 40)
    for path, why in ((text, 'is not an mcap file'), (header_only, 'nothing in it can be recovered')):
        line = _one_line(capsys, main(['play', str(path), '--quiet']), 'play')
        assert why in line and 'recover-bag' not in line, line


def test_an_output_under_a_file_says_it_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 (7): `--out FILE/sub` said 'folder FILE does not exist' of a file that exists."""
    a_file = tmp_path / 'hostname'
    a_file.write_text('x')
    line = _one_line(capsys, main(['synth', '--out', str(a_file / 'sub'), '--frames', '2']), 'synth')
    assert f'{a_file} is a file, not a folder' in line, line
