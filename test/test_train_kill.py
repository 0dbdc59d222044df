"""`nmr train` killed with SIGKILL mid-epoch resumes with `--resume` (issue 15, point 3).

A real subprocess, killed without warning while it is inside an epoch: every checkpoint file left on disk
must load (atomic writes: temporary file, fsync, rename), and `--resume` must continue from the last
completed epoch (the checkpoint interval), losing at most that interval, and finish the run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from nmr.models.checkpoint import read_checkpoint
from nmr.ros.testing import wait_for

EPOCHS = 3
SETTINGS = ['model.registration={arch: fast, encoder_channels: [8, 16, 16], stem_channels: [8]}',
            'model.translation_ngf=8', 'model.translation_blocks=1', 'model.discriminator_ndf=8',
            'model.discriminator_layers=2', f'optim.epochs={EPOCHS}', 'optim.batch_size=1',
            'data.net_hw=[32,48]', 'data.workers=0', 'data.val_fraction=0.25', 'augment.enabled=true',
            'run.log_every=1', 'run.keep_every=1']


def _nmr(*args: str) -> list[str]:
    exe = Path(sys.executable).with_name('nmr')
    return [str(exe), *args] if exe.exists() else [sys.executable, '-m', 'nmr.cli.main', *args]


def _pairs(folder: Path, n: int = 12) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    rgb, lwir = folder / 'rgb', folder / 'lwir'
    rgb.mkdir()
    lwir.mkdir()
    for i in range(n):
        base = cv2.GaussianBlur(rng.random((40, 56), dtype=np.float32), (0, 0), 3)
        base = (base - base.min()) / np.ptp(base)
        cv2.imwrite(str(rgb / f'p{i:02d}.png'), (np.stack([base, 1 - base, base ** 2], -1) * 255).astype(np.uint8))
        cv2.imwrite(str(lwir / f'p{i:02d}.png'), (base * 20000 + 10000).astype(np.uint16))
    return rgb, lwir


class _Output:
    """A child's merged stdout, collected on a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.lines.append(line)

    def text(self) -> str:
        with self._lock:
            return ''.join(self.lines)


def _run_train(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen(_nmr(*argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_loses_at_most_one_epoch(tmp_path: Path) -> None:
    rgb, lwir = _pairs(tmp_path)
    out = tmp_path / 'run'
    argv = ['train', '--pairs', str(rgb), str(lwir), '--pair', 'rgb_lwir', '--out', str(out)]
    for s in SETTINGS:
        argv += ['--set', s]

    proc = _run_train(argv)
    output = _Output(proc)
    try:
        # inside epoch 2 (epoch 1's checkpoint written), a few steps in: kill without warning
        wait_for(lambda: re.search(rf'epoch 2/{EPOCHS} step 2/', output.text()) or proc.poll() is not None,
                 300.0, 'nmr train to reach epoch 2')
        assert proc.poll() is None, output.text()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_in = max(int(e) for e in re.findall(rf'epoch (\d+)/{EPOCHS} step', output.text()))
    assert killed_in >= 2 and proc.returncode == -signal.SIGKILL
    # the newest checkpoint: the epoch before the one killed (or, had the kill landed between that
    # epoch's save and its first progress line, that very epoch)
    saved = read_checkpoint(out / 'last.pt').extra['epoch']
    assert killed_in - 1 <= saved <= killed_in

    checkpoints = sorted(out.glob('*.pt'))
    assert {p.name for p in checkpoints} >= {'last.pt', 'best.pt', 'epoch_001.pt'}
    for path in checkpoints:  # every checkpoint file on disk loads
        read_checkpoint(path)

    resumed = subprocess.run(_nmr(*argv, '--resume'), capture_output=True, text=True, timeout=600,
                             env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    match = re.search(r'resumed from \S+ at epoch (\d+)', resumed.stdout + resumed.stderr)
    assert match, resumed.stdout[-2000:]
    assert int(match.group(1)) == saved  # lost: at most the part of the epoch that ran before the kill
    last = read_checkpoint(out / 'last.pt')
    assert last.extra['epoch'] == EPOCHS
    for path in sorted(out.glob('*.pt')):
        read_checkpoint(path)
    assert not list(out.glob('.*.tmp'))


def test_a_checkpoint_write_killed_midway_leaves_the_previous_file_loadable(tmp_path: Path) -> None:
    """The write itself killed (a subprocess dies inside torch.save): the old file stays whole, the stale
    temporary file is not a `*.pt` and is removed by the next save."""
    from nmr.models.checkpoint import save_checkpoint
    from nmr.ros.testing import make_tiny_model

    path = make_tiny_model(tmp_path / 'last.pt', 'rgb_lwir')
    before = path.read_bytes()
    child = (
        'import os, sys, torch\n'
        'from nmr.models import checkpoint as c\n'
        'real = torch.save\n'
        'def dying_save(obj, f, *a, **k):\n'
        '    f.write(b"PK\\x03\\x04 half a zip")\n'
        '    f.flush()\n'
        '    os.kill(os.getpid(), 9)\n'
        'torch.save = dying_save\n'
        'loaded = c.read_checkpoint(sys.argv[1])\n'
        'c.save_checkpoint(sys.argv[1], loaded.state, loaded.metadata, loaded.extra)\n'
    )
    result = subprocess.run([sys.executable, '-c', child, str(path)], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert path.read_bytes() == before
    assert list(tmp_path.glob('.last.pt.*.tmp'))  # the half-written temporary file is left behind...
    loaded = read_checkpoint(path)
    save_checkpoint(path, loaded.state, loaded.metadata, loaded.extra)
    assert not list(tmp_path.glob('.last.pt.*.tmp'))  # ...and cleared by the next save
    read_checkpoint(path)


def test_train_out_of_disk_is_one_line_and_leaves_no_checkpoint_that_does_not_load(tmp_path: Path) -> None:
    import resource

    rgb, lwir = _pairs(tmp_path, n=4)
    out = tmp_path / 'run'
    argv = ['train', '--pairs', str(rgb), str(lwir), '--pair', 'rgb_lwir', '--out', str(out)]
    for s in SETTINGS:
        argv += ['--set', s]
    limit = 128 * 1024  # config and logs fit; a checkpoint of R, T, D and their optimisers does not

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(_nmr(*argv), capture_output=True, text=True, timeout=600, preexec_fn=small_files,
                            env={**os.environ, 'OMP_NUM_THREADS': '1'})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert lines[-1].startswith('nmr train: error: cannot write checkpoint') and 'File too large' in lines[-1]
    for path in out.glob('*.pt'):
        read_checkpoint(path)
    assert not list(out.glob('.*.tmp'))
