"""The build is quiet: `colcon build` must not end with "1 package had stderr output: nmr"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_py_does_not_announce_skipped_byte_compiling(tmp_path: Path) -> None:
    """colcon runs setup.py with PYTHONDONTWRITEBYTECODE=1; setuptools used to say so on stderr."""
    env = {**os.environ, 'PYTHONDONTWRITEBYTECODE': '1'}
    result = subprocess.run(
        [sys.executable, 'setup.py', '-q', 'build_py', '--build-lib', str(tmp_path / 'lib'), 'install_lib',
         '--build-dir', str(tmp_path / 'lib'), '--install-dir', str(tmp_path / 'site')],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / 'site' / 'nmr' / '__init__.py').is_file()
    assert 'byte-compiling' not in result.stderr, result.stderr
