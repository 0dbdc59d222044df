"""Staged writes: a writer killed mid-write leaves a staging file named after its process; the next
durable write of the same path clears what dead writers left and keeps what live ones are writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nmr import atomic


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, '-c', 'pass'])
    child.wait()
    return child.pid


def test_a_durable_write_removes_only_the_stages_of_writers_that_are_gone(tmp_path: Path) -> None:
    dead = tmp_path / f'.last.pt.{_dead_pid()}-abc123.tmp'
    live = tmp_path / f'.last.pt.{os.getppid()}-def456.tmp'
    other = tmp_path / '.other.pt.1-x.tmp'
    for stale in (dead, live, other):
        stale.write_bytes(b'half a checkpoint')
    atomic.write_bytes(tmp_path / 'last.pt', b'whole', durable=True)
    assert (tmp_path / 'last.pt').read_bytes() == b'whole'
    assert not dead.exists()
    assert live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(['last.pt', live.name, other.name])


def test_the_staging_name_carries_the_writer_process(tmp_path: Path) -> None:
    with atomic.staged_path(tmp_path / 'flow.npy') as tmp:
        assert tmp.name.startswith(f'.flow.npy.{os.getpid()}-') and tmp.parent == tmp_path
        tmp.write_bytes(b'x')
    assert (tmp_path / 'flow.npy').read_bytes() == b'x'
    assert [p.name for p in tmp_path.iterdir()] == ['flow.npy']
