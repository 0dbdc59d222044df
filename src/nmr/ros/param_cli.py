"""`nmr param list|get|set|describe NODE [NAME [VALUE]]`: a running node's parameters, as `ros2 param` does.

Why: the README's set-up has no ROS 2 command line (no `ros2 param set`), while register_node's run-time
parameters (models, backend, outputs, overlay_alpha, ...) are meant to be changed while it runs. This talks
to the node's standard parameter services (rcl_interfaces: list_parameters, get_parameters,
set_parameters, describe_parameters). VALUE is read as YAML, as `ros2 param set` reads it: `0.3` is a
double, `3` an integer, `true` a boolean, `[a, b]` a string array, anything else a string. A set the node
refuses is one line with the node's reason and exit code 2. rclpy is imported only when the verb runs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import yaml

from nmr.errors import ConfigError, NmrUserError
from nmr.ros.topics_cli import _start, _stop

NODE_NAME = 'nmr_param'
ACTIONS = ('list', 'get', 'set', 'describe')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('action', choices=ACTIONS, help='list | get | set | describe')
    parser.add_argument('node', metavar='NODE', help='full node name, e.g. /nmr/register_node')
    parser.add_argument('name', nargs='?', default=None, metavar='NAME', help='parameter (get, set, describe)')
    parser.add_argument('value', nargs='?', default=None, metavar='VALUE',
                        help='new value (set), read as YAML: 0.3, 3, true, [rgb_lwir], text')
    parser.add_argument('--timeout', type=float, default=10.0, metavar='S',
                        help='wait up to S seconds for the node and for its answer (default 10)')


def _node_name(name: str) -> str:
    return name if name.startswith('/') else '/' + name


def parse_value(text: str) -> Any:
    """The command line's VALUE as a parameter value (YAML, as `ros2 param set`)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if value is None or isinstance(value, dict):
        return text
    return value


def _call(node: Any, executor: Any, service: type, target: str, suffix: str, request: Any, timeout_s: float) -> Any:
    """Call `<target>/<suffix>`; NmrUserError naming the nodes that exist when the service never appears."""
    client = node.create_client(service, f'{target}/{suffix}')
    deadline = time.monotonic() + timeout_s
    while not client.service_is_ready():
        if time.monotonic() > deadline:
            nodes = sorted(f'{ns.rstrip("/")}/{n}' for n, ns in node.get_node_names_and_namespaces()
                           if n != NODE_NAME)
            raise NmrUserError(f'node {target} does not answer on {target}/{suffix} within {timeout_s:g} s; '
                               f'nodes on the graph: {", ".join(nodes) or "none"} (same ROS_DOMAIN_ID?)')
        executor.spin_once(timeout_sec=0.05)
    future = client.call_async(request)
    while not future.done():
        if time.monotonic() > deadline + timeout_s:
            raise NmrUserError(f'node {target} did not answer {suffix} within {timeout_s:g} s')
        executor.spin_once(timeout_sec=0.05)
    return future.result()


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_text(v) for v in value) + ']'
    return str(value)


def run(args: argparse.Namespace) -> int:
    if args.action in ('get', 'set', 'describe') and not args.name:
        raise ConfigError(f'nmr param {args.action} needs NAME: nmr param {args.action} NODE NAME'
                          + (' VALUE' if args.action == 'set' else ''))
    if args.action == 'set' and args.value is None:
        raise ConfigError('nmr param set needs VALUE: nmr param set NODE NAME VALUE')
    if args.action in ('list', 'get', 'describe') and args.value is not None:
        raise ConfigError(f'nmr param {args.action} takes no VALUE (did you mean nmr param set?)')
    target = _node_name(args.node)
    node, executor = _start(NODE_NAME)
    try:
        for line in _ACTIONS[args.action](node, executor, target, args):
            print(line)
    finally:
        _stop(node, executor)
    return 0


def _list(node: Any, executor: Any, target: str, args: argparse.Namespace) -> list[str]:
    from rcl_interfaces.srv import ListParameters

    result = _call(node, executor, ListParameters, target, 'list_parameters', ListParameters.Request(),
                   args.timeout)
    return sorted(result.result.names)


def _get(node: Any, executor: Any, target: str, args: argparse.Namespace) -> list[str]:
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    result = _call(node, executor, GetParameters, target, 'get_parameters',
                   GetParameters.Request(names=[args.name]), args.timeout)
    value = result.values[0] if result.values else None
    if value is None or value.type == ParameterType.PARAMETER_NOT_SET:
        raise NmrUserError(f'node {target} has no parameter {args.name!r} (`nmr param list {target}` lists them)')
    return [f'{args.name}: {_text(parameter_value_to_python(value))}']


def _set(node: Any, executor: Any, target: str, args: argparse.Namespace) -> list[str]:
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    value = parse_value(args.value)
    try:
        msg = Parameter(args.name, value=value).to_parameter_msg()
    except (TypeError, ValueError) as err:
        raise ConfigError(f'value {args.value!r} cannot be a parameter value ({err})') from None
    result = _call(node, executor, SetParameters, target, 'set_parameters',
                   SetParameters.Request(parameters=[msg]), args.timeout)
    outcome = result.results[0]
    if not outcome.successful:
        raise NmrUserError(f'node {target} refused {args.name} = {_text(value)}: {outcome.reason}')
    return [f'set {args.name} = {_text(value)} on {target}']


def _describe(node: Any, executor: Any, target: str, args: argparse.Namespace) -> list[str]:
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import DescribeParameters

    result = _call(node, executor, DescribeParameters, target, 'describe_parameters',
                   DescribeParameters.Request(names=[args.name]), args.timeout)
    if not result.descriptors:
        raise NmrUserError(f'node {target} has no parameter {args.name!r} (`nmr param list {target}` lists them)')
    d = result.descriptors[0]
    types = {v: k.removeprefix('PARAMETER_').lower() for k, v in vars(ParameterType).items()
             if k.startswith('PARAMETER_') and isinstance(v, int)}
    lines = [f'{d.name}: {d.description}', f'  type: {types.get(d.type, d.type)}'
             + (' (dynamic typing)' if d.dynamic_typing else ''),
             f'  read-only: {"yes (restart the node to change it)" if d.read_only else "no"}']
    return lines


_ACTIONS = {'list': _list, 'get': _get, 'set': _set, 'describe': _describe}
