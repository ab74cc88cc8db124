"""ROS 2 parameters of the perception node, declared from the one config schema.

Each leaf of :class:`concerto_ros.config.PerceptionConfig` becomes a parameter with the
same dotted name, its description, and a numeric range where the schema has one, so
``ros2 param describe /perception_node window.voxel_size`` tells the unit and limits.
"""

from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.node import Node
from rclpy.parameter import Parameter

from concerto_ros.config import SPECS, PerceptionConfig, ParamSpec, from_flat

#: settings that may change while the node runs (applied to the next frame)
RUNTIME_PARAMETERS = {"skip_log_period", "publish.features", "tf.timeout", "language.vocabulary",
                      "query.default_threshold", "query.default_top_k", "query.negatives", "query.max_top_k",
                      "query.max_negatives", "query.max_regions", "query.min_region_voxels"}

_TYPES = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
          float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
          list: ParameterType.PARAMETER_STRING_ARRAY}


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """A ``ParameterDescriptor`` with description, type, range and read-only flag."""
    desc = spec.description
    if spec.choices:
        desc += f" One of: {', '.join(map(str, spec.choices))}."
    if spec.name not in RUNTIME_PARAMETERS:
        desc += " (Read at start-up.)"
    d = ParameterDescriptor(name=spec.name, type=_TYPES[spec.type], description=desc,
                            read_only=spec.name not in RUNTIME_PARAMETERS)
    if spec.type is float and spec.lo is not None:
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.lo), to_value=float(spec.hi), step=0.0)]
    elif spec.type is int and spec.lo is not None:
        d.integer_range = [IntegerRange(from_value=int(spec.lo), to_value=int(min(spec.hi, 2**63 - 1)), step=1)]
    return d


def declare_config(node: Node) -> PerceptionConfig:
    """Declare every setting as a parameter (values from the params file/overrides) and
    return the validated config.

    Every parameter gets a value, so ``GetParameters`` over all names (``ros2 param dump``)
    answers each one: an empty list has no ROS type of its own (rclpy would make ``[]`` a
    byte array), so such a parameter is declared by type and then given an empty string
    array when neither the params file nor the command line set it.

    Raises:
        ValueError / KeyError: a value is outside its range or choices.
    """
    values = {}
    for name, spec in SPECS.items():
        desc = descriptor(spec)
        if spec.type is list and not spec.default:
            writable = descriptor(spec)
            writable.read_only = False
            p = node.declare_parameter(name, Parameter.Type.STRING_ARRAY, writable)
            if p.value is None:
                node.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, [])])
            node.set_descriptor(name, desc)
            p = node.get_parameter(name)
        else:
            p = node.declare_parameter(name, spec.default, desc)
        values[name] = [] if p.value is None and spec.type is list else p.value
    return from_flat(values)
