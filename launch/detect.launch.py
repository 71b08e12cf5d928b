"""Start the ukpgan_detector lifecycle node (configured and activated unless autostart:=false),
optionally a depth player (play:=synthetic, a dataset folder or a bag) and RViz (use_rviz:=true).

One sensor from the launch arguments, or several from a list (``sensors:=FILE``, a YAML file
with one entry per sensor, each with its own namespace; see config/sensors_example.yaml). Each
sensor keeps its TF and diagnostics apart: in a namespace ``ns`` the odometry frame defaults to
``ns/odom`` and the player's sensor frame to ``ns/camera_depth_optical_frame``, so two sensors
never publish the same ``odom -> sensor`` pair.

Autostart drives configure, then activate, once: later transitions requested by hand
(``ros2 lifecycle set``) do exactly what they say. use_rviz:=true where rviz2 is not installed
logs a warning and starts the rest.

Written against the launch_ros API shared by Humble, Iron, Jazzy and newer.
"""

from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition
from launch.logging import get_logger
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

# The per-sensor arguments: a sensors file's entries take these keys (namespace required there).
SENSOR_ARGS = {
    "namespace": ("", "namespace of the sensor's nodes (and prefix of its default frames)"),
    "input_topic": ("/camera/depth/points", "PointCloud2 topic the detector subscribes to"),
    "params_file": (None, "node parameters (YAML)"),
    "device": ("auto", "auto, cpu or cuda"),
    "play": ("none", "none; synthetic or synthetic_lidar (built-in scenes); a 7-Scenes/TUM/KITTI or scan folder; "
                     "or a bag (.mcap/.db3 file, rosbag2 folder, ROS 1 .bag) to replay into input_topic"),
    "rate": ("0.0", "player rate in Hz (0: the sequence's rate)"),
    "frame_id": ("", "the player's sensor frame; empty: the sequence's own (camera_depth_optical_frame for the "
                      "built-in camera), or ns/camera_depth_optical_frame in a namespace"),
    "odom_frame": ("", "the detector's odometry frame; empty: the params_file value, or ns/odom in a namespace"),
}
DEFAULT_FRAME_ID = "camera_depth_optical_frame"


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("ukpgan_ros")
    defaults = dict(SENSOR_ARGS)
    defaults["params_file"] = (PathJoinSubstitution([share, "config", "detector.yaml"]), SENSOR_ARGS["params_file"][1])
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in defaults.items()]
    args += [
        DeclareLaunchArgument("sensors", default_value="",
                              description="a YAML file listing several sensors (one entry each with the per-sensor "
                                          "arguments above, namespace required); empty: one sensor from the arguments"),
        DeclareLaunchArgument("autostart", default_value="true", description="configure and activate the node(s)"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="open RViz with config/ukpgan.rviz"),
        DeclareLaunchArgument("shm_profile", default_value=PathJoinSubstitution([share, "config", "fastdds_shm.xml"]),
                              description="Fast DDS profile for the player (shared memory for large clouds)"),
    ]
    sensors = OpaqueFunction(function=_launch_sensors)
    rviz = OpaqueFunction(function=_rviz_if_installed, args=[PathJoinSubstitution([share, "config", "ukpgan.rviz"])],
                          condition=IfCondition(LaunchConfiguration("use_rviz")))
    return LaunchDescription([*args, sensors, rviz])


def _launch_sensors(context):
    """Every sensor's nodes, from the resolved launch arguments (``context.launch_configurations``)."""
    conf = context.launch_configurations
    common = {"autostart": _truthy(conf.get("autostart", "true")), "shm_profile": conf.get("shm_profile", "")}
    if conf.get("sensors", ""):
        sensors = read_sensors_file(conf["sensors"], {k: conf.get(k, "") for k in SENSOR_ARGS})
    else:
        sensors = [{k: conf.get(k, "") for k in SENSOR_ARGS}]
    actions = []
    for sensor in sensors:
        actions += sensor_actions(sensor, **common)
    return actions


def read_sensors_file(path, defaults):
    """The sensors of a YAML file ``{sensors: [{namespace: ..., input_topic: ..., ...}, ...]}``:
    each entry starts from ``defaults`` (the launch arguments) and overrides them. Refused with a
    RuntimeError naming the file: no list, an unknown key, a missing or repeated namespace."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise RuntimeError(f"sensors file {path}: {e}") from None
    entries = data.get("sensors") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RuntimeError(f"sensors file {path}: expected 'sensors:' with a non-empty list of sensors")
    out, seen = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RuntimeError(f"sensors file {path}: entry {i} is not a mapping")
        unknown = set(entry) - set(SENSOR_ARGS)
        if unknown:
            raise RuntimeError(f"sensors file {path}: entry {i} has unknown key(s) {', '.join(sorted(unknown))} "
                               f"(allowed: {', '.join(SENSOR_ARGS)})")
        sensor = {**defaults, **{k: str(v) for k, v in entry.items()}}
        ns = sensor["namespace"].strip("/")
        if not ns or ns in seen:
            raise RuntimeError(f"sensors file {path}: entry {i} needs a namespace of its own (got {ns!r})")
        seen.add(ns)
        out.append(sensor)
    return out


def sensor_frames(namespace, frame_id, odom_frame):
    """(player frame_id, detector odom_frame); None keeps the player's own (the sequence's frame,
    e.g. a bag's or KITTI's 'velodyne', else camera_depth_optical_frame) or the params file's
    odom_frame. In a namespace ``ns`` the defaults are ``ns/camera_depth_optical_frame`` and
    ``ns/odom``."""
    ns = namespace.strip("/")
    frame = frame_id or (f"{ns}/{DEFAULT_FRAME_ID}" if ns else None)
    odom = odom_frame or (f"{ns}/odom" if ns else None)
    return frame, odom


def sensor_actions(sensor, autostart=True, shm_profile=""):
    """The detector (with its one autostart configure + activate) and, unless play is none, a
    player, for one sensor given as resolved strings."""
    frame_id, odom_frame = sensor_frames(sensor["namespace"], sensor["frame_id"], sensor["odom_frame"])
    overrides = {"device": sensor["device"]}
    if odom_frame is not None:
        overrides["odom_frame"] = odom_frame
    detector = LifecycleNode(
        package="ukpgan_ros",
        executable="detector",
        name="ukpgan_detector",
        namespace=sensor["namespace"],
        parameters=[sensor["params_file"], overrides],
        remappings=[("cloud_in", sensor["input_topic"])],
        output="screen",
    )
    actions = [detector]
    if autostart:
        # Activate after the first configure only (handle_once): a configure requested by hand
        # later, e.g. after a cleanup, must leave the node inactive, as the user asked.
        actions.insert(0, RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=detector,
            start_state="configuring",
            entities=[OpaqueFunction(function=_activate_if_configured, args=[detector])],
            handle_once=True,
        )))
        actions.append(EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(detector),
                                                   transition_id=Transition.TRANSITION_CONFIGURE)))
    if sensor["play"] not in ("", "none"):
        player_params = {"source": sensor["play"], "rate": float(sensor["rate"] or 0.0), "loop": True}
        if frame_id is not None:
            player_params["frame_id"] = frame_id
        if odom_frame is not None:
            player_params["odom_frame"] = odom_frame
        actions.append(Node(
            package="ukpgan_ros",
            executable="depth_player",
            name="depth_player",
            namespace=sensor["namespace"],
            parameters=[player_params],
            remappings=[("cloud_in", sensor["input_topic"])],
            # A publisher of 5 MB clouds needs a big shared-memory segment (see README: transport).
            additional_env={"FASTDDS_DEFAULT_PROFILES_FILE": shm_profile} if shm_profile else None,
            output="screen",
        ))
    return actions


def _truthy(text):
    return str(text).strip().lower() in ("true", "1", "yes", "on")


def _activate_if_configured(context, detector):
    """The one autostart activate, if the first configure succeeded (the event leaving
    'configuring' is in ``context.locals.event``; a failed configure goes back to unconfigured)."""
    if context.locals.event.goal_state != "inactive":
        get_logger("detect.launch").warning("ukpgan_detector failed to configure: not activating it")
        return []
    return [EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(detector),
                                        transition_id=Transition.TRANSITION_ACTIVATE))]


def _rviz_if_installed(context, rviz_config):
    """RViz with ``rviz_config``, or a warning where rviz2 is not installed (instead of a launch
    that aborts and leaves the detector running)."""
    try:
        get_package_prefix("rviz2")
    except (PackageNotFoundError, KeyError, ValueError):
        get_logger("detect.launch").warning(
            "use_rviz:=true, but the rviz2 package is not installed: starting without RViz "
            "(install ros-$ROS_DISTRO-rviz2, or run RViz on another machine with config/ukpgan.rviz)")
        return []
    return [Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz_config])]
