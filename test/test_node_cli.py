"""`register_node`'s own command line (issue 23, item 2): `--help` prints usage without starting ROS, and
arguments outside `--ros-args` (which rclpy would ignore, leaving the defaults in force) are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('rclpy')

from nmr.pipeline.settings import PARAMS


def _register_node(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name('register_node')
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', 'nmr.ros.node']
    env = {**os.environ, 'ROS_DOMAIN_ID': '231', 'ROS_LOCALHOST_ONLY': '1'}
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_prints_every_parameter_topic_and_example_and_exits_0(flag: str) -> None:
    result = _register_node(flag)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for spec in PARAMS:  # from the one table: every parameter with its description
        assert f'{spec.name} ' in text and spec.description.split()[0] in text, spec.name
    assert '/flir_boson/image_raw' in text and 'rgb_lwir/registered' in text and 'fused/camera_info' in text
    assert '--ros-args -p models.rgb_lwir:=' in text
    assert 'pairs rgb_lwir' not in result.stderr + text  # the node's startup line: it did not start


@pytest.mark.parametrize('args', [['-p', 'models.rgb_lwir:=/x/model.onnx'], ['--pairs', 'rgb_lwir'],
                                  ['extra', '--ros-args', '-p', 'log_throttle_s:=1.0']])
def test_arguments_outside_ros_args_are_one_line_naming_the_ros_args_form(args: list[str]) -> None:
    result = _register_node(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith('register_node: error: unrecognised arguments') and '--ros-args -p' in lines[0]
    if args[0] == '-p':
        assert '--ros-args -p models.rgb_lwir:=/x/model.onnx' in lines[0]
