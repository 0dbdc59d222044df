"""`register_node --help` and the check of its command line, before ROS starts.

Why: rclpy reads parameters only inside `--ros-args ... [--]`; anything else on the command line
(`register_node -p models.rgb_lwir:=X`, a habit from `ros2 run ... -p`) was silently ignored and the node
ran with its defaults. Now such arguments are one line naming the `--ros-args -p` form, exit code 2, and
`--help` prints the parameters (from the one table, nmr.pipeline.settings.PARAMS), topics and examples.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from nmr.domain import DEFAULT_TOPICS, PAIR_FIXED_KIND, PAIRS
from nmr.pipeline.fused import FUSED_TOPICS
from nmr.pipeline.settings import PAIR_OUTPUTS, PARAMS, camera_info_topic

PROG = 'register_node'
HELP_FLAGS = ('-h', '--help')


def _value(default: object) -> str:
    if isinstance(default, list):
        return '[' + ','.join(str(v) for v in default) + ']'
    if isinstance(default, bool):
        return 'true' if default else 'false'
    return repr(default) if default == '' else str(default)


def usage_text() -> str:
    """The whole `--help` text: parameters (name, default, description), topics in and out, examples."""
    lines = [
        f'usage: {PROG} [-h] --ros-args [-p NAME:=VALUE]... [--params-file FILE] [-r FROM:=TO]...',
        '',
        'Live RGB / LWIR / depth registration: subscribes to the camera topics, synchronises each pair, runs',
        "the pair's R_Phi model and publishes the registered image, flow, flow visualisation and overlay.",
        'Every setting is a ROS parameter: pass it after --ros-args (anything else on the command line is an',
        'error). Parameters marked * can also be set while the node runs (`nmr param set`, `ros2 param set`).',
        '',
        'parameters (name, default, description):',
    ]
    width = max(len(p.name) for p in PARAMS) + 2
    for spec in PARAMS:
        head = f'  {"*" if spec.dynamic else " "}{spec.name:<{width}}{_value(spec.default)}'
        lines.append(head)
        lines.extend(textwrap.wrap(spec.description, 96, initial_indent=' ' * 6, subsequent_indent=' ' * 6))
    lines += ['', 'topics in (set with topics.<input>; transport.<input>:=compressed reads <topic>/compressed):']
    for stream, topic in DEFAULT_TOPICS.items():
        lines.append(f'  {stream:<6} {topic}  (sensor_msgs/Image)')
    for stream in (s for s in DEFAULT_TOPICS if s in PAIR_FIXED_KIND.values()):
        lines.append(f'  {stream:<6} {camera_info_topic(DEFAULT_TOPICS[stream])}  (sensor_msgs/CameraInfo, '
                     'optional: re-published with the outputs)')
    lines += ['', 'topics out (under the node namespace, e.g. -r __ns:=/nmr; each with the fixed image\'s header):']
    for pair in PAIRS:
        lines.append(f'  {pair}/' + ', '.join(PAIR_OUTPUTS) + ' (sensor_msgs/Image), '
                     f'{pair}/camera_info (CameraInfo)')
    lines.append('  ' + ', '.join(FUSED_TOPICS) + ', fused/camera_info (both pairs: every modality on the '
                 'LWIR grid)')
    lines.append('  /diagnostics (diagnostic_msgs/DiagnosticArray)')
    lines += [
        '',
        'examples:',
        f'  {PROG} --ros-args -p models.rgb_lwir:=runs/smoke/best.onnx -p pairs:=[rgb_lwir]',
        f'  {PROG} --ros-args --params-file config/register.yaml -r __ns:=/nmr',
        f'  {PROG} --ros-args -p topics.lwir:=/my_camera/image_raw -p use_sim_time:=true',
        f'  ros2 run nmr {PROG} --ros-args -p backend:=onnxruntime     (in a ROS 2 workspace)',
        '',
        'docs/ros.md has the details (QoS, camera_info, diagnostics, run-time parameters).',
    ]
    return '\n'.join(lines)


def non_ros_arguments(argv: Sequence[str]) -> list[str]:
    """The arguments outside `--ros-args ... [--]` blocks (argv[0] excluded), as rclpy sees them."""
    from rclpy.utilities import remove_ros_args

    return list(remove_ros_args(list(argv)))[1:]


def argument_problem(extra: Sequence[str]) -> str | None:
    """One line for arguments the node would ignore, or None when there are none."""
    if not extra:
        return None
    shown = ' '.join(extra)
    params = [a for a in extra if ':=' in a]
    example = f'{PROG} --ros-args -p {params[0]}' if params else f'{PROG} --ros-args -p NAME:=VALUE'
    return (f'{PROG}: error: unrecognised arguments: {shown}; parameters go after --ros-args, e.g. '
            f'`{example}` (`{PROG} --help` lists them)')
