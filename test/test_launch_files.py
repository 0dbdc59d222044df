"""launch/register.launch.py, rviz/nmr.rviz and the Fast DDS profile, checked without launch/launch_ros/rviz.

`launch` and `launch_ros` are not installable here, so the launch file is executed against recording
stand-ins of the classes it uses: that still checks that it builds a description, which arguments it
declares, which executable and parameters the node gets, and that every parameter exists in the table.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from nmr.pipeline.fused import FUSED_TOPICS
from nmr.pipeline.settings import OUTPUTS, PAIR_OUTPUTS, PAIRS, PARAMS_BY_NAME, defaults

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch' / 'register.launch.py'
RVIZ = ROOT / 'rviz' / 'nmr.rviz'
FASTDDS = ROOT / 'config' / 'fastdds_large_images.xml'


class Recorded:
    """Stand-in for any launch class: remembers its arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    def perform(self, context: dict[str, str]) -> str:
        return context[self.args[0]]


def _fake_launch_modules() -> dict[str, types.ModuleType]:
    names = {
        'launch': ['LaunchDescription'],
        'launch.actions': ['DeclareLaunchArgument', 'OpaqueFunction', 'SetEnvironmentVariable'],
        'launch.substitutions': ['PathJoinSubstitution'],
        'launch_ros.actions': ['Node'],
        'launch_ros.substitutions': ['FindPackageShare'],
        'launch_ros': [],
    }
    modules = {}
    for module, classes in names.items():
        m = types.ModuleType(module)
        for cls in classes:
            setattr(m, cls, type(cls, (Recorded,), {}))
        modules[module] = m
    modules['launch.substitutions'].LaunchConfiguration = LaunchConfiguration  # type: ignore[attr-defined]
    return modules


@pytest.fixture
def launch_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, module in _fake_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('register_launch', LAUNCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def description(launch_module: Any) -> Any:
    return launch_module.generate_launch_description()


def _context(**values: str) -> dict[str, str]:
    context = {'model_rgb_lwir': '', 'model_rgb_depth': '', 'backend': '', 'device': '', 'use_sim_time': 'false',
               'config': 'c.yaml', 'namespace': 'nmr', 'rviz': 'false', 'rviz_config': '',
               'rviz_template': str(RVIZ), 'fixed_frame': 'flir_boson_optical_frame', 'rgb_topic': '',
               'lwir_topic': '', 'depth_topic': '', 'rig': '', 'residual': ''}
    context.update(values)
    return context


def _run_opaque(description: Any, context: dict[str, str]) -> list[Any]:
    opaque = next(a for a in description.args[0] if type(a).__name__ == 'OpaqueFunction')
    return opaque.kwargs['function'](context)


def _arguments(description: Any) -> dict[str, Any]:
    return {a.args[0]: a.kwargs for a in description.args[0] if type(a).__name__ == 'DeclareLaunchArgument'}


def test_launch_file_parses_and_declares_the_documented_arguments(description: Any) -> None:
    ast.parse(LAUNCH.read_text())
    args = _arguments(description)
    assert set(args) >= {'config', 'model_rgb_lwir', 'model_rgb_depth', 'backend', 'device', 'namespace',
                         'use_sim_time', 'rviz', 'fastdds_profile', 'rgb_topic', 'lwir_topic', 'depth_topic',
                         'fixed_frame', 'rviz_config'}
    assert all(a.get('description') for a in args.values())
    env = [a for a in description.args[0] if type(a).__name__ == 'SetEnvironmentVariable']
    assert env and env[0].args[0] == 'FASTDDS_DEFAULT_PROFILES_FILE'
    profile_default = args['fastdds_profile']['default_value'].args[0]
    config_default = args['config']['default_value'].args[0]
    assert profile_default[-1] == FASTDDS.name and config_default[-1] == 'register.yaml'
    assert (ROOT / 'config' / config_default[-1]).is_file() and FASTDDS.is_file()


def test_launch_file_starts_register_node_with_known_parameters(description: Any) -> None:
    context = _context(model_rgb_lwir='/m/lwir.onnx', backend='torch', use_sim_time='True',
                       lwir_topic='/boson/image_raw')
    nodes = _run_opaque(description, context)
    node = next(n for n in nodes if n.kwargs['executable'] == 'register_node')
    _config, overrides = node.kwargs['parameters']
    assert overrides == {'models.rgb_lwir': '/m/lwir.onnx', 'backend': 'torch', 'topics.lwir': '/boson/image_raw',
                         'use_sim_time': True}
    assert all(name in PARAMS_BY_NAME for name in overrides if name != 'use_sim_time')
    assert node.kwargs['package'] == 'nmr' and node.kwargs['name'] == 'register_node'
    assert not [n for n in nodes if n.kwargs['executable'] == 'rviz2']  # rviz:=false


def test_rig_launch_argument_sets_the_rig_and_residual_parameters(description: Any) -> None:
    """`rig:=RIG.yaml` (issue 20) reaches the node's `rig` parameter; `residual:=true` a boolean (the
    parameter is a bool: a string would be refused by the node's validation)."""
    assert {'rig', 'residual'} <= set(_arguments(description))
    nodes = _run_opaque(description, _context(rig='/r/rig.yaml', residual='true'))
    _config, overrides = next(n for n in nodes if n.kwargs['executable'] == 'register_node').kwargs['parameters']
    assert overrides['rig'] == '/r/rig.yaml' and overrides['residual'] is True
    assert 'rig' in PARAMS_BY_NAME and PARAMS_BY_NAME['residual'].default is False
    nodes = _run_opaque(description, _context())
    _config, overrides = next(n for n in nodes if n.kwargs['executable'] == 'register_node').kwargs['parameters']
    assert 'rig' not in overrides and 'residual' not in overrides  # the config's values stay


def test_rviz_without_rviz2_installed_stops_before_starting_anything(description: Any, launch_module: Any) -> None:
    """Regression: launch failed on the missing rviz2 package after register_node had started (orphaned)."""
    assert not launch_module.rviz2_installed()  # rviz2 is not installed here
    with pytest.raises(launch_module.RvizMissingError, match=r'rviz:=true but rviz2 is not installed.*rviz:=false'):
        _run_opaque(description, _context(rviz='true'))


def test_rviz_config_follows_namespace_topics_and_fixed_frame(description: Any, launch_module: Any,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_module, 'rviz2_installed', lambda: True)
    nodes = _run_opaque(description, _context(rviz='true', namespace='/robot/nmr', fixed_frame='boson_camera',
                                              lwir_topic='/boson/image_raw'))
    rviz = next(n for n in nodes if n.kwargs['executable'] == 'rviz2')
    assert rviz.kwargs['arguments'][0] == '-d'
    doc = yaml.safe_load(Path(rviz.kwargs['arguments'][1]).read_text())
    topics = {d['Topic']['Value'] for d in doc['Visualization Manager']['Displays']}
    assert '/robot/nmr/rgb_lwir/overlay' in topics and '/robot/nmr/fused/rgb' in topics
    assert not any(t.startswith('/nmr/') for t in topics)
    assert '/boson/image_raw' in topics and '/flir_boson/image_raw' not in topics
    assert doc['Visualization Manager']['Global Options']['Fixed Frame'] == 'boson_camera'
    explicit = _run_opaque(description, _context(rviz='true', rviz_config='/my.rviz'))
    assert next(n for n in explicit if n.kwargs['executable'] == 'rviz2').kwargs['arguments'] == ['-d', '/my.rviz']


def test_executables_and_data_files_exist_in_setup_py() -> None:
    setup = ROOT / 'setup.py'
    tree = ast.parse(setup.read_text())
    scripts = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
               and '=' in n.value and ':' in n.value]
    entry = {s.split('=')[0].strip(): s.split('=')[1].strip() for s in scripts}
    assert entry['register_node'] == 'nmr.ros.node:main'
    from nmr.ros import node  # noqa: F401 - the entry point's module imports

    text = setup.read_text()
    for pattern in ("glob('launch/*.py')", "glob('config/*')", "glob('rviz/*.rviz')"):
        assert pattern in text


def test_rviz_config_shows_inputs_and_every_pair_output() -> None:
    doc = yaml.safe_load(RVIZ.read_text())
    displays = doc['Visualization Manager']['Displays']
    topics = {d['Topic']['Value'] for d in displays}
    values = defaults()
    assert {values['topics.rgb'], values['topics.lwir'], values['topics.depth']} <= topics
    for pair in PAIRS:
        for out in ('registered', 'flow_viz', 'overlay'):
            assert f'/nmr/{pair}/{out}' in topics
    shown = {t.removeprefix('/nmr/') for t in topics if t.startswith('/nmr/')}
    node_outputs = {f'{p}/{o}' for p in PAIRS for o in PAIR_OUTPUTS} | set(FUSED_TOPICS)
    assert shown <= node_outputs  # nothing shown that the node does not publish
    assert all(d['Class'] == 'rviz_default_plugins/Image' for d in displays)
    assert {f'/nmr/{t}' for t in FUSED_TOPICS} <= topics  # the fused images too
    fixed_frame = doc['Visualization Manager']['Global Options']['Fixed Frame']
    assert fixed_frame != 'map' and 'flir_boson' in fixed_frame  # the LWIR camera's frame: no TF needed
    assert not any(t.endswith('/flow') for t in topics)  # 32FC2 cannot be displayed
    assert 'fused' in OUTPUTS


def test_fastdds_profile_has_a_16_mb_shared_memory_segment() -> None:
    ns = {'d': 'http://www.eprosima.com'}
    root = ET.parse(FASTDDS).getroot()
    shm = [t for t in root.iterfind('.//d:transport_descriptor', ns)
           if t.findtext('d:type', namespaces=ns) == 'SHM']
    assert shm and int(shm[0].findtext('d:segment_size', namespaces=ns)) == 16 * 1024 * 1024
    participant = root.find('.//d:participant', ns)
    assert participant is not None and participant.get('is_default_profile') == 'true'
    used = {e.text for e in participant.iterfind('.//d:userTransports/d:transport_id', ns)}
    assert shm[0].findtext('d:transport_id', namespaces=ns) in used
    assert re.search(r'useBuiltinTransports>\s*false', FASTDDS.read_text())


def test_package_xml_depends_only_on_keys_that_resolve_and_not_on_rviz2() -> None:
    """kilted has no python3-onnx rosdep key (rosdep install failed); rviz2 is optional; ros2launch runs
    `ros2 launch`."""
    root = ET.parse(ROOT / 'package.xml').getroot()
    execs = {e.text for e in root.iterfind('exec_depend')}
    assert 'python3-onnx' not in execs and 'rviz2' not in execs
    assert {'ros2launch', 'launch', 'launch_ros', 'python3-onnxruntime-pip'} <= execs
