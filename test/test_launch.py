"""detect.launch.py on a real launch_ros: the node comes up active and turns the player's
synthetic stream into keypoints. Skips where launch/launch_ros are not installed (PyPI has them not)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

launch = pytest.importorskip("launch", reason="launch (ROS 2) is not installed; the PyPI 'launch' is another project")
if not hasattr(launch, "LaunchService"):
    pytest.skip("the installed 'launch' is not ROS 2's launch", allow_module_level=True)
launch_ros = pytest.importorskip("launch_ros", reason="launch_ros is not installed (not on PyPI)")

ROOT = Path(__file__).resolve().parents[1]


def _ament_prefix(tmp: Path) -> Path:
    """A minimal install prefix like colcon's: ament index, share/ files and lib/ executables."""
    prefix = tmp / "install"
    (prefix / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (prefix / "share/ament_index/resource_index/packages/ukpgan_ros").write_text("")
    for sub in ("launch", "config"):
        (prefix / "share/ukpgan_ros").mkdir(parents=True, exist_ok=True)
        os.symlink(ROOT / sub, prefix / "share/ukpgan_ros" / sub)
    os.symlink(ROOT / "package.xml", prefix / "share/ukpgan_ros/package.xml")
    lib = prefix / "lib/ukpgan_ros"
    lib.mkdir(parents=True)
    for exe, module in (("detector", "ukpgan_ros.ros.detector_node"), ("depth_player", "ukpgan_ros.ros.player_node")):
        path = lib / exe
        path.write_text(textwrap.dedent(f"""\
            #!{sys.executable}
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from {module} import main
            sys.exit(main())
            """))
        path.chmod(0o755)
    return prefix


_LAUNCHER = """
import sys
import launch
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
ls = launch.LaunchService(argv=[])
ls.include_launch_description(IncludeLaunchDescription(
    PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=[a.split(":=", 1) for a in sys.argv[2:]]))
sys.exit(ls.run())
"""


def test_launch_brings_detector_to_active_and_publishes(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    prefix = _ament_prefix(tmp_path)
    env = dict(os.environ, ROS_DOMAIN_ID="57", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               AMENT_PREFIX_PATH=f"{prefix}{os.pathsep}{os.environ.get('AMENT_PREFIX_PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    detector: fps\n    max_keypoints: 64\n    voxel_size: 0.1\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(ROOT / "launch/detect.launch.py"), "play:=synthetic", "rate:=3.0",
         f"params_file:={params}", "input_topic:=/test_points"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=57)
    node = rclpy.create_node("launch_probe", context=ctx)
    got: list[PointCloud2] = []
    node.create_subscription(PointCloud2, "/ukpgan_detector/keypoints", got.append, 5)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(got) < 2 and proc.poll() is None:
            ex.spin_once(timeout_sec=0.2)
    finally:
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert len(got) >= 2, f"no keypoints from the launched detector; launch output:\n{out[-4000:]}"
    assert got[-1].width == 64
    assert "active" in out and "shut down" in out, out[-4000:]
