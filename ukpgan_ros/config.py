"""The one configuration of the pipeline; ROS parameters, YAML and CLI flags mirror its fields.

Each field carries its help text and its allowed values or range in ``metadata`` so the node can
declare typed ROS parameters with descriptors and the CLI can validate the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ukpgan_ros.features.registry import DESCRIPTOR_NAMES, Descriptor, descriptor as _descriptor

__all__ = [
    "PipelineConfig", "StreamConfig", "ConfigError", "DEFAULT_MODEL_PATH", "DETECTORS", "DESCRIPTORS", "DEVICES",
    "NORMAL_RADIUS_VOXELS", "MATCH_DISTANCE_VOXELS", "NMS_RADIUS_VOXELS",
]

# The names every front end offers (ROS parameters, CLI flags, evaluation); factories refuse others.
DETECTORS = ("ukpgan", "iss", "random", "fps")
DESCRIPTORS = DESCRIPTOR_NAMES  # the descriptor registry's kinds
DEVICES = ("auto", "cpu", "cuda")

DEFAULT_MODEL_PATH = str(Path(__file__).resolve().parent / "weights" / "ukpgan.safetensors")

# Every radius derives from the voxel size, as in Open3D's registration examples (normals 2x,
# match distance 1.5x; descriptor radii: the registry). NMS suppresses within
# the match distance: two keypoints that close count as one point for RANSAC, so the second adds
# no constraint (7-Scenes, 113 pairs, 100 keypoints: UKPGAN inlier ratio 0.42 at 1.5x vs 0.38 at 2x).
NORMAL_RADIUS_VOXELS = 2.0
MATCH_DISTANCE_VOXELS = 1.5
NMS_RADIUS_VOXELS = MATCH_DISTANCE_VOXELS


class ConfigError(ValueError):
    """A parameter value is outside what the pipeline accepts."""


def _f(default: Any, help: str, *, choices: tuple | None = None, range: tuple | None = None,
       live: bool = False) -> Any:
    """A config field; ``live`` marks parameters a running node applies at once (the others at the
    next configure)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range, "live": live})


class _Fields:
    """Typed fields with help/choices/range metadata: validation, dict round trips."""

    def validate(self):
        """Raise ConfigError naming the first bad field; return self when all are valid."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, type(f.default)) or (isinstance(value, bool) and not isinstance(f.default, bool)):
                raise ConfigError(f"{f.name}: expected {type(f.default).__name__}, got {value!r}")
            choices, rng = f.metadata.get("choices"), f.metadata.get("range")
            if choices and value not in choices:
                raise ConfigError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
            if rng and not (rng[0] <= value <= rng[1]):
                raise ConfigError(f"{f.name}: {value!r} is outside [{rng[0]}, {rng[1]}]")
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]):
        """Build from a dict (YAML, ROS parameters); unknown keys are an error, ints widen to floats."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(names)
        if unknown:
            raise ConfigError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        kwargs = {}
        for k, v in values.items():
            if isinstance(names[k].default, float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            kwargs[k] = v
        return cls(**kwargs).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def field_specs(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def live_fields(cls) -> frozenset[str]:
        """Names of the fields a running pipeline applies at once."""
        return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("live"))


@dataclass
class PipelineConfig(_Fields):
    """Everything that shapes detection and registration (metres, seconds)."""

    detector: str = _f("ukpgan", "keypoint detector backend", choices=DETECTORS)
    device: str = _f("auto", "torch device for the detector and SHOT", choices=DEVICES)
    voxel_size: float = _f(
        0.05, "voxel size of the working cloud [m]; radii derive from it. The finest voxel: a stream whose first "
              "cloud would hold more than max_working_points points at it works at a coarser one",
        range=(0.005, 1.0))
    working_points: int = _f(
        0, "auto voxel: 0 keeps voxel_size (up to max_working_points); N > 0 picks the voxel on the first frame of a "
           "stream (and after a reset) so that the working cloud holds about N points, finer or coarser than "
           "voxel_size; radii follow the chosen voxel",
        range=(0, 1000000))
    max_working_points: int = _f(
        6000, "working-cloud cap: a stream whose first cloud (and the first after a reset) holds more points than "
              "this at voxel_size works at the smallest coarser voxel that fits (LiDAR scans, large scenes: every "
              "sensor costs about the same per frame; a 640x480 depth camera at 5 cm stays below it); 0: no cap",
        range=(0, 1000000))
    max_keypoints: int = _f(250, "keypoint budget per frame", range=(4, 100000), live=True)
    nms_radius: float = _f(0.0, "non-maximum suppression radius [m]; 0 means 1.5 x voxel_size (the match distance)",
                           range=(0.0, 10.0))
    min_range: float = _f(0.1, "drop points closer than this to the sensor [m]", range=(0.0, 100.0), live=True)
    max_range: float = _f(1000.0, "drop points farther than this from the sensor [m] (default: none; "
                                  "max_working_points bounds the cost of far-reaching sensors)",
                          range=(0.01, 1000.0), live=True)
    descriptor: str = _f("shot", "descriptor at keypoints for matching (shot: free from the UKPGAN pass)",
                         choices=DESCRIPTORS)
    match_against: str = _f(
        "dense", "match keypoint descriptors against the target's keypoints or all its points",
        choices=("keypoints", "dense"), live=True,
    )
    registration: str = _f(
        "keyframe", "none; consecutive (frame-to-frame odometry); keyframe (odometry against keyframes, "
                    "relocalises when lost); reference (each frame placed on its own in reference_cloud)",
        choices=("none", "consecutive", "keyframe", "reference"),
    )
    reference_cloud: str = _f(
        "", "a saved map folder (ukpgan map, ~/save_map) or a PLY/PCD/NPY cloud (seen from its frame origin) to "
            "localise against when registration=reference")
    max_cloud_bytes: int = _f(
        2 * 1024**3, "largest cloud file read (reference_cloud, CLI inputs) and largest point data its header "
        "may claim [bytes]", range=(1024, 2**40))
    ransac_max_iterations: int = _f(100000, "RANSAC iteration cap", range=(100, 10000000), live=True)
    ransac_confidence: float = _f(0.999, "RANSAC stop confidence", range=(0.5, 0.999999), live=True)
    icp_refine: bool = _f(True, "refine RANSAC with point-to-plane ICP on the voxel clouds", live=True)
    min_inliers: int = _f(6, "fewer RANSAC inlier matches than this marks a registration failed", range=(3, 100000), live=True)
    min_fitness: float = _f(0.2, "lower final fitness (overlap fraction) marks a registration failed", range=(0.0, 1.0),
                         live=True)
    min_constraint: float = _f(
        0.04, "a registration whose point pairs leave a direction of motion unconstrained (smallest eigenvalue of "
              "their normalised point-to-plane Hessian below this: rings a spinning LiDAR draws on the floor, a "
              "floor and walls along the motion, one plane) is marked failed; 0: no check. Generic scenes give "
              ">= 0.08 (KITTI, 7-Scenes, 3DMatch), degenerate fits < 0.03", range=(0.0, 1.0), live=True)
    keyframe_min_fitness: float = _f(
        0.6, "keyframe mode: a frame whose overlap (fitness) with the keyframe is below this becomes a keyframe",
        range=(0.0, 1.0), live=True)
    keyframe_min_inliers: int = _f(
        40, "keyframe mode: a frame with fewer RANSAC inlier matches to the keyframe becomes a keyframe",
        range=(3, 100000), live=True)
    keyframe_max_distance: float = _f(
        0.3, "keyframe mode: a frame farther than this from the keyframe becomes a keyframe [m]",
        range=(0.01, 100.0), live=True)
    keyframe_max_angle: float = _f(
        15.0, "keyframe mode: a frame turned more than this from the keyframe becomes a keyframe [deg]",
        range=(0.5, 180.0), live=True)
    max_keyframes: int = _f(
        200, "keyframes kept; a full store drops the keyframe nearest to another one (never the tracked one)",
        range=(2, 100000), live=True)
    lost_after: int = _f(
        3, "registration failures in a row after which tracking is lost (diagnostics ERROR, no pose); "
           "failed frames are relocalised from the first failure on", range=(1, 1000), live=True)
    relocalization_candidates: int = _f(
        5, "keyframes (most descriptor votes) a frame is registered against when relocalising or localising "
           "in a map", range=(1, 100), live=True)
    relocalization_min_fitness: float = _f(
        0.3, "overlap (fitness) a relocalisation or map localisation needs to be accepted", range=(0.0, 1.0),
        live=True)
    loop_closure: bool = _f(
        True, "keyframe mode: look for loops (older keyframes seen again) at each new keyframe, verify them by "
              "registration and optimise the keyframe pose graph in the background (map -> odom correction)",
        live=True)
    loop_candidates: int = _f(
        3, "loop closure: older keyframes (most descriptor votes) each new keyframe is registered against",
        range=(1, 50), live=True)
    loop_min_fitness: float = _f(
        0.5, "loop closure: overlap (fitness) a loop registration needs (stricter than tracking)", range=(0.0, 1.0),
        live=True)
    loop_min_inliers: int = _f(
        30, "loop closure: RANSAC inlier matches a loop registration needs", range=(3, 100000), live=True)
    loop_min_separation: int = _f(
        10, "loop closure: a loop candidate is at least this many keyframes older than the new keyframe (its "
            "neighbours are odometry, not loops)", range=(2, 100000), live=True)
    map_dir: str = _f("ukpgan_map", "folder ~/save_map writes the keyframe map to (relative: to the working "
                                    "directory); an existing map there is replaced", live=True)
    publish_tf: bool = _f(True, "broadcast odom_frame -> sensor frame on /tf (needs tf2_msgs)", live=True)
    deskew: bool = _f(
        False, "correct the motion distortion of clouds that carry per-point time (t, time or timestamp fields) "
               "with the motion of the last two placed frames (constant velocity, as KISS-ICP); for spinning "
               "LiDARs on vehicles, off for depth cameras (no sweep)", live=True)
    odom_frame: str = _f("odom", "frame of the accumulated pose", live=True)
    map_frame: str = _f("map", "frame of the loop-corrected map (REP 105): with loop closure the node publishes "
                               "map_frame -> odom_frame on /tf and ~/map_pose", live=True)
    model_path: str = _f("", "UKPGAN weights (.safetensors); empty means the shipped model")
    seed: int = _f(0, "seed for random sampling and RANSAC", range=(0, 2**31 - 1), live=True)

    @property
    def normal_radius(self) -> float:
        return NORMAL_RADIUS_VOXELS * self.voxel_size

    @property
    def match_distance(self) -> float:
        return MATCH_DISTANCE_VOXELS * self.voxel_size

    @property
    def descriptor_spec(self) -> Descriptor:
        """The registry's entry of the configured descriptor (length, radius, compute function)."""
        return _descriptor(self.descriptor)

    def descriptor_radius(self, kind: str | None = None) -> float:
        """Support radius [m] of descriptor ``kind`` (default: the configured one), from the registry."""
        return _descriptor(kind or self.descriptor).radius(self.voxel_size)

    @property
    def auto_voxel(self) -> bool:
        """Whether the voxel is chosen from a stream's first cloud (working_points or the cap)."""
        return self.working_points > 0 or self.max_working_points > 0

    @property
    def effective_nms_radius(self) -> float:
        return self.nms_radius if self.nms_radius > 0 else NMS_RADIUS_VOXELS * self.voxel_size

    @property
    def resolved_model_path(self) -> str:
        return self.model_path or DEFAULT_MODEL_PATH

    def validate(self) -> "PipelineConfig":
        """Check every field, then the relations between fields."""
        super().validate()
        if self.min_range >= self.max_range:
            raise ConfigError(f"min_range ({self.min_range}) must be below max_range ({self.max_range})")
        if self.registration == "reference" and not self.reference_cloud:
            raise ConfigError("registration=reference needs reference_cloud (a map folder or a cloud file)")
        for name in ("odom_frame", "map_frame"):
            frame = getattr(self, name)
            if not frame.strip() or frame != frame.strip():
                raise ConfigError(f"{name}: {frame!r} is not a frame name (empty or with spaces)")
        if self.map_frame == self.odom_frame:
            raise ConfigError(f"map_frame and odom_frame are both {self.map_frame!r}: REP 105 needs two frames")
        return self


@dataclass
class StreamConfig(_Fields):
    """How the node receives frames; ROS-side only, declared as parameters like PipelineConfig."""

    input: str = _f("cloud", "cloud: PointCloud2 on cloud_in; depth: depth/image_raw + depth/camera_info",
                    choices=("cloud", "depth"))
    qos_reliability: str = _f(
        "auto", "subscription reliability; auto matches the publishers (best_effort if any is)",
        choices=("auto", "reliable", "best_effort"),
    )
    qos_depth: int = _f(5, "subscription queue depth; the node still processes only the newest frame", range=(1, 100))
    depth_stride: int = _f(1, "use every k-th depth pixel row/column (depth input)", range=(1, 16))
    depth_scale: float = _f(1000.0, "16UC1 depth units per metre (1000: millimetres)", range=(1.0, 100000.0))
    diagnostics_period: float = _f(1.0, "seconds between /diagnostics messages", range=(0.05, 60.0))
    depth_info_tolerance: float = _f(
        0.0, "depth input: pair an image with a CameraInfo whose stamp differs by at most this [s]; 0: equal stamps",
        range=(0.0, 1.0))
    depth_info_timeout: float = _f(
        0.5, "depth input: seconds an image waits for the CameraInfo of its stamp; then the latest CameraInfo is "
        "used if the intrinsics have been constant (latched or slow CameraInfo), else the image is dropped",
        range=(0.0, 10.0))
