"""The layer rules of docs/design.md, checked on the source: imports only go up the list of layers, and
only `nmr.ros` talks to ROS 2 (rclpy and message packages), so everything else runs and tests without it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / 'src' / 'nmr'

#: docs/design.md's table, top (imported by everyone) to bottom; a module may import its own layer and above.
LAYERS: list[set[str]] = [
    {'nmr', 'nmr.errors', 'nmr.domain', 'nmr.resources', 'nmr.flow'},
    {'nmr.geometry'},
    {'nmr.data'},
    {'nmr.synth'},
    {'nmr.models'},
    {'nmr.training'},
    {'nmr.calibration'},
    {'nmr.inference'},
    {'nmr.evaluation'},
    {'nmr.pipeline'},
    {'nmr.ros'},
    {'nmr.cli', 'nmr.bench', 'nmr.demo'},
]
ROS_PACKAGES = {'rclpy', 'sensor_msgs', 'std_msgs', 'diagnostic_msgs', 'builtin_interfaces', 'rosgraph_msgs',
                'geometry_msgs'}


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _layer(module: str) -> int:
    for depth in (2, 1):
        prefix = '.'.join(module.split('.')[:depth])
        for i, names in enumerate(LAYERS):
            if prefix in names:
                return i
    raise AssertionError(f'{module} is in no layer of docs/design.md: add it to LAYERS and the design')


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute import in the file (top level and inside functions), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
    return out


FILES = sorted(SRC.rglob('*.py'))


@pytest.mark.parametrize('path', FILES, ids=[_module(p) for p in FILES])
def test_imports_follow_the_layers(path: Path) -> None:
    own = _layer(_module(path))
    for name, line in _imports(path):
        top = name.split('.')[0]
        if top == 'nmr' and name != 'nmr':
            assert _layer(name) <= own, f'{_module(path)}:{line} imports {name}, a layer below it'
        if top in ROS_PACKAGES:
            assert _module(path).startswith('nmr.ros'), f'{_module(path)}:{line} imports {name} outside nmr.ros'
