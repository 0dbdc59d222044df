"""Declare the register node's parameters in rclpy from the ONE table (nmr.pipeline.settings.PARAMS).

Parameters are declared with dynamic typing so that a value of the wrong type reaches our validation,
which names the parameter and what it expects, instead of an rclpy exception with a traceback.
Parameter overrides that match no declared parameter (a typo in the YAML) are reported as errors too.

Run time (`ros2 param set`): the table's `dynamic` parameters are validated by the node's on-set callback
(`updated_settings`) and applied; every other parameter is declared read-only, so rclpy refuses the set
instead of accepting a value the node would never use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter

from nmr.errors import ConfigError
from nmr.pipeline.settings import PARAMS, PARAMS_BY_NAME, NodeSettings, model_path, validate

_BUILTIN = frozenset({'use_sim_time', 'start_type_description_service', 'qos_overrides'})


def declare_and_load(node: Node) -> NodeSettings:
    """Declare every parameter, read the values (defaults overridden by params files / -p) and validate."""
    values: dict[str, Any] = {}
    for spec in PARAMS:
        description = spec.description + ('' if spec.dynamic else ' (read-only at run time: restart to change)')
        descriptor = ParameterDescriptor(description=description, dynamic_typing=True,
                                         read_only=not spec.dynamic)
        param = node.declare_parameter(spec.name, spec.default, descriptor)
        values[spec.name] = plain(param.value)
    overrides = getattr(node, '_parameter_overrides', {}) or {}
    declared = {spec.name for spec in PARAMS}
    unknown = sorted(n for n in overrides if n not in declared and n.split('.')[0] not in _BUILTIN)
    if unknown:
        raise ConfigError(
            f"unknown parameter '{unknown[0]}' for {node.get_name()} (see config/register.yaml)")
    return validate(values)


def updated_settings(current: NodeSettings, params: Sequence[Parameter]) -> NodeSettings | None:
    """The settings after a parameter set, or None when it touches none of ours. Raises ConfigError.

    A model file that does not exist is refused here: accepting it would only leave the pair idle.
    """
    changed = {p.name: plain(p.value) for p in params if p.name in PARAMS_BY_NAME}
    if not changed:
        return None
    settings = validate({**current.values, **changed})
    for name in changed:
        if name.startswith('models.') and changed[name]:
            path = model_path(settings, name.split('.', 1)[1])
            if not Path(path).is_file():
                raise ConfigError(f"parameter '{name}': model file {path} does not exist; give an existing "
                                  '.onnx/.pt file')
    return settings


def plain(value: Any) -> Any:
    """rclpy returns arrays as array.array / lists: make them plain lists for validation."""
    if value is None:
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    return list(value)
