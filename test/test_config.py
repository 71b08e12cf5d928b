"""One configuration: validation, and the YAML / ROS parameters / CLI that mirror it."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import ROOT
from ukpgan_ros.config import ConfigError, PipelineConfig, StreamConfig


def test_defaults_are_valid_and_radii_follow_the_voxel():
    cfg = PipelineConfig().validate()
    assert cfg.normal_radius == pytest.approx(2 * cfg.voxel_size)
    assert cfg.descriptor_radius("fpfh") == pytest.approx(5 * cfg.voxel_size)
    assert cfg.match_distance == pytest.approx(1.5 * cfg.voxel_size)
    assert cfg.effective_nms_radius == pytest.approx(1.5 * cfg.voxel_size)
    assert PipelineConfig(nms_radius=0.3).effective_nms_radius == 0.3
    StreamConfig().validate()
    with pytest.raises(ConfigError, match="depth_info_timeout"):
        StreamConfig.from_mapping({"depth_info_timeout": -1.0})


@pytest.mark.parametrize("bad, word", [
    ({"voxel_size": -0.1}, "voxel_size"), ({"detector": "sift"}, "detector"), ({"max_keypoints": 0}, "max_keypoints"),
    ({"icp_refine": 1}, "icp_refine"), ({"min_range": 9.0, "max_range": 5.0}, "min_range"), ({"registration": "reference"}, "reference_cloud"),
    ({"unknown_knob": 1}, "unknown_knob"), ({"device": "tpu"}, "device"), ({"odom_frame": ""}, "odom_frame"),
    ({"odom_frame": " odom"}, "odom_frame"),
])
def test_bad_values_name_the_field(bad, word):
    with pytest.raises(ConfigError, match=word):
        PipelineConfig.from_mapping(bad)


def test_integers_widen_to_floats_but_bools_stay_strict():
    assert PipelineConfig.from_mapping({"voxel_size": 1}).voxel_size == 1.0
    with pytest.raises(ConfigError):
        PipelineConfig.from_mapping({"voxel_size": True})


def test_shipped_yaml_mirrors_every_field_with_its_default():
    doc = yaml.safe_load((ROOT / "config/detector.yaml").read_text())
    params = doc["/**"]["ros__parameters"]
    fields = {f.name: f.default for c in (PipelineConfig, StreamConfig) for f in dataclasses.fields(c)}
    assert set(params) - {"autostart"} == set(fields)
    for name, default in fields.items():
        assert params[name] == default, name


def test_cli_flags_mirror_the_config():
    from ukpgan_ros.cli import build_parser

    args = build_parser().parse_args(["register", "a.ply", "b.ply", "--voxel-size", "0.03", "--no-icp-refine",
                                      "--descriptor", "shot"])
    assert args.voxel_size == 0.03 and args.icp_refine is False and args.descriptor == "shot"
