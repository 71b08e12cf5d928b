"""ROS parameters mirroring the configuration: declared with descriptors (help, ranges, choices),
read into PipelineConfig/StreamConfig, validated on ``ros2 param set``, applied live where the
config field says so."""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node

from ukpgan_ros.config import ConfigError, PipelineConfig, StreamConfig

__all__ = ["declare_parameters", "read_configs", "check_update", "live_update"]

_CONFIGS = (PipelineConfig, StreamConfig)


def _descriptor(f) -> ParameterDescriptor:
    meta = f.metadata
    text = meta.get("help", "")
    if meta.get("choices"):
        text += f" (one of: {', '.join(meta['choices'])})"
    if not meta.get("live"):
        text += " [takes effect at the next configure]"
    d = ParameterDescriptor(description=text)
    rng = meta.get("range")
    if rng is not None and isinstance(f.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(rng[0]), to_value=float(rng[1]), step=0.0)]
    elif rng is not None and isinstance(f.default, int) and not isinstance(f.default, bool):
        d.integer_range = [IntegerRange(from_value=int(rng[0]), to_value=int(rng[1]), step=1)]
    if meta.get("choices"):
        d.additional_constraints = "one of: " + ", ".join(meta["choices"])
    return d


def declare_parameters(node: Node) -> list[str]:
    """Declare every config field (and ``autostart``); returns the config parameter names."""
    names = []
    for cls in _CONFIGS:
        for f in cls.field_specs():
            node.declare_parameter(f.name, f.default, _descriptor(f))
            names.append(f.name)
    node.declare_parameter("autostart", False, ParameterDescriptor(
        description="configure and activate once on start (for use without a lifecycle manager)"))
    return names


def _split(values: dict[str, Any]) -> tuple[PipelineConfig, StreamConfig]:
    return tuple(cls.from_mapping({k: v for k, v in values.items() if k in cls.__dataclass_fields__})
                 for cls in _CONFIGS)  # type: ignore[return-value]


def read_configs(node: Node, names: list[str]) -> tuple[PipelineConfig, StreamConfig]:
    """The node's current parameters as validated configs (raises ConfigError)."""
    return _split({n: node.get_parameter(n).value for n in names})


def check_update(node: Node, names: list[str], params) -> tuple[SetParametersResult, PipelineConfig | None]:
    """Validate a ``set_parameters`` request against the whole config; on success also return the
    resulting PipelineConfig (None when no config parameter is touched)."""
    updates = {p.name: p.value for p in params if p.name in names}
    if not updates:
        return SetParametersResult(successful=True), None
    current = {n: node.get_parameter(n).value for n in names}
    current.update(updates)
    try:
        pipe, _ = _split(current)
    except (ConfigError, TypeError) as e:
        return SetParametersResult(successful=False, reason=str(e)), None
    return SetParametersResult(successful=True), pipe


def live_update(running: PipelineConfig, wanted: PipelineConfig, touched: set[str]) -> tuple[PipelineConfig, list[str]]:
    """The running config with the touched live fields taken from ``wanted``; and the touched
    fields that wait for the next configure."""
    live = PipelineConfig.live_fields()
    changed = {k: getattr(wanted, k) for k in touched if k in live}
    later = sorted(set(touched) - live)
    cfg = PipelineConfig.from_mapping({**running.to_dict(), **changed}) if changed else running
    return cfg, later
