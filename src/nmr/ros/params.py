"""Declare the register node's parameters in rclpy from the ONE table (nmr.pipeline.settings.PARAMS).

Parameters are declared with dynamic typing so that a value of the wrong type reaches our validation,
which names the parameter and what it expects, instead of an rclpy exception with a traceback.
Parameter overrides that match no declared parameter (a typo in the YAML) are reported as errors too.
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node

from nmr.errors import ConfigError
from nmr.pipeline.settings import PARAMS, NodeSettings, validate

_BUILTIN = frozenset({'use_sim_time', 'start_type_description_service', 'qos_overrides'})


def declare_and_load(node: Node) -> NodeSettings:
    """Declare every parameter, read the values (defaults overridden by params files / -p) and validate."""
    values: dict[str, Any] = {}
    for spec in PARAMS:
        descriptor = ParameterDescriptor(description=spec.description, dynamic_typing=True)
        param = node.declare_parameter(spec.name, spec.default, descriptor)
        values[spec.name] = _plain(param.value)
    overrides = getattr(node, '_parameter_overrides', {}) or {}
    declared = {spec.name for spec in PARAMS}
    unknown = sorted(n for n in overrides if n not in declared and n.split('.')[0] not in _BUILTIN)
    if unknown:
        raise ConfigError(
            f"unknown parameter '{unknown[0]}' for {node.get_name()} (see config/register.yaml)")
    return validate(values)


def _plain(value: Any) -> Any:
    """rclpy returns arrays as array.array / lists: make them plain lists for validation."""
    if value is None:
        return None
    if isinstance(value, (str, bool, int, float)):
        return value
    return list(value)
