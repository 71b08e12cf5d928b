"""Start the ukpgan_detector lifecycle node (configured and activated unless autostart:=false),
optionally a depth player (play:=synthetic or a dataset folder) and RViz (use_rviz:=true).

Autostart drives configure, then activate, once: later transitions requested by hand
(``ros2 lifecycle set``) do exactly what they say. use_rviz:=true where rviz2 is not installed
logs a warning and starts the rest.

Written against the launch_ros API shared by Humble, Iron, Jazzy and newer.
"""

from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.conditions import IfCondition, UnlessCondition
from launch.logging import get_logger
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("ukpgan_ros")
    arg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "detector.yaml"]),
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the nodes"),
        DeclareLaunchArgument("input_topic", default_value="/camera/depth/points",
                              description="PointCloud2 topic the detector subscribes to"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu or cuda"),
        DeclareLaunchArgument("autostart", default_value="true", description="configure and activate the node"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="open RViz with config/ukpgan.rviz"),
        DeclareLaunchArgument("play", default_value="none",
                              description="none, synthetic, or a 7-Scenes/TUM folder to replay into input_topic"),
        DeclareLaunchArgument("rate", default_value="0.0", description="player rate in Hz (0: sequence rate)"),
        DeclareLaunchArgument("shm_profile", default_value=PathJoinSubstitution([share, "config", "fastdds_shm.xml"]),
                              description="Fast DDS profile for the player (shared memory for large clouds)"),
    ]

    detector = LifecycleNode(
        package="ukpgan_ros",
        executable="detector",
        name="ukpgan_detector",
        namespace=arg("namespace"),
        parameters=[arg("params_file"), {"device": arg("device")}],
        remappings=[("cloud_in", arg("input_topic"))],
        output="screen",
    )
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(detector),
                          transition_id=Transition.TRANSITION_CONFIGURE),
        condition=IfCondition(arg("autostart")),
    )
    # Activate after the first configure only (handle_once): a configure requested by hand
    # later, e.g. after a cleanup, must leave the node inactive, as the user asked.
    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=detector,
            start_state="configuring",
            entities=[OpaqueFunction(function=_activate_if_configured, args=[detector])],
            handle_once=True,
        ),
        condition=IfCondition(arg("autostart")),
    )
    player = Node(
        package="ukpgan_ros",
        executable="depth_player",
        name="depth_player",
        namespace=arg("namespace"),
        parameters=[{"source": arg("play"), "rate": arg("rate"), "loop": True}],
        remappings=[("cloud_in", arg("input_topic"))],
        # A publisher of 5 MB clouds needs a big shared-memory segment (see README: transport).
        additional_env={"FASTDDS_DEFAULT_PROFILES_FILE": arg("shm_profile")},
        output="screen",
        condition=UnlessCondition(PythonExpression(["'", arg("play"), "' == 'none'"])),
    )
    rviz = OpaqueFunction(function=_rviz_if_installed, args=[PathJoinSubstitution([share, "config", "ukpgan.rviz"])],
                          condition=IfCondition(arg("use_rviz")))
    return LaunchDescription([*args, activate, detector, configure, player, rviz])


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
