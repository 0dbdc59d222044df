"""`nmr topics` and `nmr param` (issue 23, item 9: the ROS 2 command line is not part of the set-up) against
a real register_node process over DDS. Every wait is on the node's log, a service or a publisher, with a
deadline; the tools themselves wait for discovery."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip('rclpy')
pytestmark = pytest.mark.ros

from nmr.ros.testing import make_tiny_model, ros_env, start_node, stop_node, wait_for  # noqa: E402

NS = '/nmr_cli'
NODE = f'{NS}/register_node'


def _nmr(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name('nmr')
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'nmr.cli.main']
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ))


@pytest.fixture(scope='module')
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A register_node (pair rgb_lwir, tiny model, /diagnostics at 4 Hz) in a private DDS domain; its log."""
    folder = tmp_path_factory.mktemp('ros_cli')
    ros_env()
    model = make_tiny_model(folder / 'rgb_lwir.pt', 'rgb_lwir')
    log = folder / 'node.log'
    proc = start_node({'models.rgb_lwir': str(model), 'pairs': ['rgb_lwir'], 'backend': 'torch',
                       'device': 'cpu', 'diagnostics_period_s': 0.25}, log, extra_args=['-r', f'__ns:={NS}'])
    try:
        wait_for(lambda: re.search(r'pairs .*; inputs ', log.read_text()) or proc.poll() is not None, 60.0,
                 'register_node to start')
        assert proc.poll() is None, log.read_text()[-2000:]
        yield log
    finally:
        assert stop_node(proc) == 0


def _error(result: subprocess.CompletedProcess, verb: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f'nmr {verb}: error:'), result.stderr
    return lines[0]


def test_param_gets_sets_and_reports_what_the_node_refuses(node: Path) -> None:
    assert _nmr('param', 'get', NODE, 'overlay_alpha').stdout.strip() == 'overlay_alpha: 0.5'
    done = _nmr('param', 'set', NODE, 'overlay_alpha', '0.25')
    assert done.returncode == 0 and 'set overlay_alpha = 0.25' in done.stdout, done.stderr
    assert _nmr('param', 'get', NODE, 'overlay_alpha').stdout.strip() == 'overlay_alpha: 0.25'
    wait_for(lambda: 'parameters set: overlay_alpha=0.25' in node.read_text(), 10.0, 'the node to apply it')
    done = _nmr('param', 'set', NODE, 'outputs', '[flow, registered]')  # YAML list -> string array
    assert done.returncode == 0, done.stderr
    assert _nmr('param', 'get', NODE, 'outputs').stdout.strip() == 'outputs: [flow, registered]'
    assert 'between 0 and 1' in _error(_nmr('param', 'set', NODE, 'overlay_alpha', '7.0'), 'param')
    assert 'read-only' in _error(_nmr('param', 'set', NODE, 'topics.rgb', '/x'), 'param')
    assert "no parameter 'nope'" in _error(_nmr('param', 'get', NODE, 'nope'), 'param')
    listed = _nmr('param', 'list', NODE).stdout.split()
    assert {'overlay_alpha', 'models.rgb_lwir', 'input_wait_s', 'use_sim_time'} <= set(listed)
    assert 'read-only: yes' in _nmr('param', 'describe', NODE, 'topics.rgb').stdout
    missing = _error(_nmr('param', 'get', '/no/such_node', 'x', '--timeout', '8'), 'param')
    assert NODE in missing  # names the nodes that do exist


def test_topics_lists_the_graph_and_measures_a_topics_rate(node: Path) -> None:
    listed = _nmr('topics', '--wait', '30')
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf'^{NS}/rgb_lwir/flow +sensor_msgs/msg/Image +\(1 publishers', listed.stdout, re.M), \
        listed.stdout
    assert re.search(r'^/diagnostics +diagnostic_msgs/msg/DiagnosticArray', listed.stdout, re.M)
    hz = _nmr('topics', '/diagnostics', '--duration', '3', '--wait', '30')
    assert hz.returncode == 0, hz.stderr
    last = hz.stdout.strip().splitlines()[-1]
    rate = float(re.search(r'average rate: ([\d.]+) Hz', last).group(1))
    assert 2.0 <= rate <= 6.0, last  # the node publishes /diagnostics every 0.25 s
    assert re.search(r'bandwidth [\d.]+ (B|KB)/s', last), last
    assert '/no/such' in _error(_nmr('topics', '/no/such', '--wait', '1'), 'topics')
