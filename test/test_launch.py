"""detect.launch.py: its wiring checked everywhere (compiled, and run against recording
stand-ins of the launch API, with the real ament index); and on a real launch_ros the node comes
up active, turns the player's synthetic stream into keypoints, and then obeys lifecycle
transitions requested by hand. The real-launch test skips where launch/launch_ros are not
installed (PyPI has them not)."""

from __future__ import annotations

import ast
import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest

from conftest import ros_domain

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch/detect.launch.py"


def _real_launch():
    launch = pytest.importorskip("launch", reason="launch (ROS 2) is not installed; the PyPI 'launch' is another project")
    if not hasattr(launch, "LaunchService"):
        pytest.skip("the installed 'launch' is not ROS 2's launch")
    pytest.importorskip("launch_ros", reason="launch_ros is not installed (not on PyPI)")


# ------------------------------------------------------------------------------ without launch
class _Rec:
    """Stands in for any launch class: records how it was built."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __repr__(self):
        return f"{type(self).__name__}({self.args}, {self.kwargs})"


class _Log:
    def __init__(self):
        self.warnings: list[str] = []

    def warning(self, msg, *a):
        self.warnings.append(msg % a if a else msg)


def _load_with_recorders(monkeypatch):
    """Import the launch file with every launch/launch_ros name it uses replaced by a recorder
    class of that name (lifecycle_msgs and ament_index_python are the real ones)."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    log = _Log()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] in ("launch", "launch_ros"):
            parts = node.module.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if not getattr(sys.modules.get(name), "__recorder__", False):
                    mod = types.ModuleType(name)
                    mod.__recorder__ = True
                    monkeypatch.setitem(sys.modules, name, mod)
            mod = sys.modules[node.module]
            for alias in node.names:
                if alias.name == "get_logger":
                    setattr(mod, "get_logger", lambda *_: log)
                elif alias.name == "matches_action":
                    setattr(mod, "matches_action", lambda action: ("matches", action))
                else:
                    setattr(mod, alias.name, type(alias.name, (_Rec,), {}))
    spec = importlib.util.spec_from_file_location("detect_launch_under_test", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, log


def _entities(ld):
    return ld.args[0]


def test_launch_file_compiles_for_python_3_8_and_newer():
    source = LAUNCH_FILE.read_text()
    compile(source, str(LAUNCH_FILE), "exec")
    ast.parse(source, feature_version=(3, 8))  # Humble on Ubuntu 22.04 runs Python 3.10; Foxy-era syntax is fine


def _sensor(**over):
    base = {"namespace": "", "input_topic": "/camera/depth/points", "params_file": "/p.yaml", "device": "auto",
            "play": "none", "rate": "0.0", "frame_id": "", "odom_frame": ""}
    return {**base, **over}


def test_autostart_activates_once_and_only_after_a_successful_configure(monkeypatch):
    pytest.importorskip("lifecycle_msgs")
    from lifecycle_msgs.msg import Transition

    module, log = _load_with_recorders(monkeypatch)
    entities = module.sensor_actions(_sensor())
    handlers = [e for e in entities if type(e).__name__ == "RegisterEventHandler"]
    assert len(handlers) == 1
    on_transition = handlers[0].args[0]
    assert type(on_transition).__name__ == "OnStateTransition"
    # One-shot: a configure requested by hand after a cleanup must not be followed by an activate.
    assert on_transition.kwargs["handle_once"] is True and on_transition.kwargs["start_state"] == "configuring"
    (fn_action,) = on_transition.kwargs["entities"]
    fn, fn_args = fn_action.kwargs["function"], fn_action.kwargs["args"]
    ok = types.SimpleNamespace(locals=types.SimpleNamespace(event=types.SimpleNamespace(goal_state="inactive")))
    (emit,) = fn(ok, *fn_args)
    change = emit.kwargs["event"]
    assert change.kwargs["transition_id"] == Transition.TRANSITION_ACTIVATE
    assert change.kwargs["lifecycle_node_matcher"] == ("matches", on_transition.kwargs["target_lifecycle_node"])
    failed = types.SimpleNamespace(locals=types.SimpleNamespace(event=types.SimpleNamespace(goal_state="unconfigured")))
    assert fn(failed, *fn_args) == [] and "failed to configure" in log.warnings[-1]
    # autostart:=false: no configure, no activate; play:=none: no player
    manual = module.sensor_actions(_sensor(), autostart=False)
    assert [type(e).__name__ for e in manual] == ["LifecycleNode"]


def test_frames_follow_the_namespace_and_explicit_values_win(monkeypatch):
    pytest.importorskip("lifecycle_msgs")
    module, _ = _load_with_recorders(monkeypatch)
    assert module.sensor_frames("", "", "") == (None, None)  # the sequence's frame, the params file's odom_frame
    assert module.sensor_frames("/cam1", "", "") == ("cam1/camera_depth_optical_frame", "cam1/odom")
    assert module.sensor_frames("cam1", "lidar", "world_odom") == ("lidar", "world_odom")
    acts = module.sensor_actions(_sensor(namespace="cam1", play="synthetic", input_topic="/cam1/points"))
    det = next(a for a in acts if type(a).__name__ == "LifecycleNode")
    player = next(a for a in acts if type(a).__name__ == "Node")
    assert det.kwargs["namespace"] == "cam1" and det.kwargs["parameters"][1]["odom_frame"] == "cam1/odom"
    assert det.kwargs["remappings"] == [("cloud_in", "/cam1/points")]
    assert player.kwargs["parameters"][0]["frame_id"] == "cam1/camera_depth_optical_frame"
    assert player.kwargs["parameters"][0]["odom_frame"] == "cam1/odom"
    # outside a namespace the params file's odom_frame is not overridden
    plain = next(a for a in module.sensor_actions(_sensor()) if type(a).__name__ == "LifecycleNode")
    assert "odom_frame" not in plain.kwargs["parameters"][1]


def test_a_sensors_file_starts_one_detector_per_sensor(monkeypatch, tmp_path):
    pytest.importorskip("lifecycle_msgs")
    pytest.importorskip("yaml")
    module, _ = _load_with_recorders(monkeypatch)
    conf = {"sensors": str(ROOT / "config/sensors_example.yaml"), "autostart": "true", "shm_profile": "/shm.xml",
            **{k: v for k, v in _sensor().items()}}
    acts = module._launch_sensors(types.SimpleNamespace(launch_configurations=conf))
    dets = [a for a in acts if type(a).__name__ == "LifecycleNode"]
    players = [a for a in acts if type(a).__name__ == "Node"]
    assert [d.kwargs["namespace"] for d in dets] == ["front", "rear"] and len(players) == 2
    odoms = [d.kwargs["parameters"][1]["odom_frame"] for d in dets]
    assert odoms == ["front/odom", "rear/odom"]
    assert len([a for a in acts if type(a).__name__ == "RegisterEventHandler"]) == 2
    for text, why in (("sensors: []\n", "non-empty list"), ("sensors:\n  - input_topic: /a\n", "namespace"),
                      ("sensors:\n  - namespace: a\n  - namespace: a\n", "namespace of its own"),
                      ("sensors:\n  - namespace: a\n    colour: red\n", "unknown key"), ("sensors: [", "")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(RuntimeError, match=f"sensors file {bad}.*{why}"):
            module.read_sensors_file(str(bad), _sensor())
    with pytest.raises(RuntimeError, match="sensors file"):
        module.read_sensors_file(str(tmp_path / "missing.yaml"), _sensor())


def test_show_args_says_play_accepts_a_bag(monkeypatch):
    module, _ = _load_with_recorders(monkeypatch)
    assert "bag" in module.SENSOR_ARGS["play"][1] and "synthetic_lidar" in module.SENSOR_ARGS["play"][1]


def _ament_prefix_with(tmp: Path, package: str) -> Path:
    index = tmp / package / "share/ament_index/resource_index/packages"
    index.mkdir(parents=True)
    (index / package).write_text("")
    return tmp / package


def test_use_rviz_without_rviz2_warns_and_starts_the_rest(monkeypatch, tmp_path):
    pytest.importorskip("ament_index_python")
    module, log = _load_with_recorders(monkeypatch)
    entities = _entities(module.generate_launch_description())
    rviz = [e for e in entities if type(e).__name__ == "OpaqueFunction" and e.kwargs["function"] is module._rviz_if_installed]
    assert len(rviz) == 1 and type(rviz[0].kwargs["condition"]).__name__ == "IfCondition"
    sensors = [e for e in entities if type(e).__name__ == "OpaqueFunction" and e.kwargs["function"] is module._launch_sensors]
    assert len(sensors) == 1  # the detector(s) start whatever RViz does
    fn, fn_args = rviz[0].kwargs["function"], rviz[0].kwargs["args"]
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(_ament_prefix_with(tmp_path, "somethingelse")))
    assert fn(None, *fn_args) == []
    assert "rviz2 package is not installed" in log.warnings[-1]
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(_ament_prefix_with(tmp_path, "rviz2")))
    (node,) = fn(None, *fn_args)
    assert node.kwargs["package"] == "rviz2" and node.kwargs["arguments"][0] == "-d"


# ------------------------------------------------------------------------------ real launch


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


def _stop(proc, ex, node, ctx) -> str:
    """Shut the probe down, SIGINT the launch (as Ctrl-C would) and return what it printed."""
    import rclpy

    ex.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def test_launch_brings_detector_to_active_and_publishes(tmp_path):
    _real_launch()
    import rclpy
    from lifecycle_msgs.msg import State, Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2

    prefix = _ament_prefix(tmp_path)
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain(2)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               AMENT_PREFIX_PATH=f"{prefix}{os.pathsep}{os.environ.get('AMENT_PREFIX_PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    detector: fps\n    max_keypoints: 64\n    voxel_size: 0.1\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(ROOT / "launch/detect.launch.py"), "play:=synthetic", "rate:=3.0",
         f"params_file:={params}", "input_topic:=/test_points"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(2))
    node = rclpy.create_node("launch_probe", context=ctx)
    got: list[PointCloud2] = []
    node.create_subscription(PointCloud2, "/ukpgan_detector/keypoints", got.append, 5)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(got) < 2 and proc.poll() is None:
            ex.spin_once(timeout_sec=0.2)

        def call(client, request):
            fut = client.call_async(request)
            ex.spin_until_future_complete(fut, timeout_sec=30)
            return fut.result()

        change = node.create_client(ChangeState, "/ukpgan_detector/change_state")
        get = node.create_client(GetState, "/ukpgan_detector/get_state")
        assert change.wait_for_service(timeout_sec=10)
        # By hand after autostart: each transition does exactly what it says, once.
        for tid in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_CLEANUP, Transition.TRANSITION_CONFIGURE):
            assert call(change, ChangeState.Request(transition=Transition(id=tid))).success, tid
        end = time.monotonic() + 3
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.1)
        state = call(get, GetState.Request()).current_state.id
        assert state == State.PRIMARY_STATE_INACTIVE, "configure by hand must not be followed by an activate"
        assert call(change, ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))).success
    finally:
        out = _stop(proc, ex, node, ctx)
    assert len(got) >= 2, f"no keypoints from the launched detector; launch output:\n{out[-4000:]}"
    assert got[-1].width == 64
    assert "active" in out and "shut down" in out, out[-4000:]


def test_two_sensors_side_by_side_keep_tf_and_diagnostics_apart(tmp_path):
    """One launch, two sensors from a list: both detectors publish keypoints, each its own
    ``ns/odom -> ns/camera_depth_optical_frame`` pair on /tf, and diagnostics under its own name."""
    _real_launch()
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import PointCloud2
    try:
        from tf2_msgs.msg import TFMessage
    except ImportError:  # not on PyPI: /tf is checked where a ROS install provides it
        TFMessage = None

    prefix = _ament_prefix(tmp_path)
    env = dict(os.environ, ROS_DOMAIN_ID=str(ros_domain(3)), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               AMENT_PREFIX_PATH=f"{prefix}{os.pathsep}{os.environ.get('AMENT_PREFIX_PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    detector: fps\n    max_keypoints: 32\n    voxel_size: 0.1\n"
                      "    registration: consecutive\n")
    sensors = tmp_path / "sensors.yaml"
    sensors.write_text("sensors:\n  - namespace: cam1\n    input_topic: /cam1/points\n    play: synthetic\n"
                       "  - namespace: cam2\n    input_topic: /cam2/points\n    play: synthetic\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, str(ROOT / "launch/detect.launch.py"), f"sensors:={sensors}", "rate:=3.0",
         f"params_file:={params}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=ros_domain(3))
    node = rclpy.create_node("launch_probe2", context=ctx)
    got = {"cam1": [], "cam2": []}
    pairs: set[tuple[str, str]] = set()
    names: set[str] = set()
    for ns in got:
        node.create_subscription(PointCloud2, f"/{ns}/ukpgan_detector/keypoints", got[ns].append, 5)
    if TFMessage is not None:
        node.create_subscription(TFMessage, "/tf", lambda m: pairs.update(
            (t.header.frame_id, t.child_frame_id) for t in m.transforms), 50)
    want_pairs = 2 if TFMessage is not None else 0
    node.create_subscription(DiagnosticArray, "/diagnostics", lambda m: names.update(s.name for s in m.status), 50)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None and (
                min(len(v) for v in got.values()) < 3 or len(pairs) < want_pairs or len(names) < 2):
            ex.spin_once(timeout_sec=0.2)
    finally:
        out = _stop(proc, ex, node, ctx)
    assert all(len(v) >= 3 for v in got.values()), f"{ {k: len(v) for k, v in got.items()} }\n{out[-4000:]}"
    if TFMessage is not None:
        assert {("cam1/odom", "cam1/camera_depth_optical_frame"),
                ("cam2/odom", "cam2/camera_depth_optical_frame")} <= pairs, pairs
    assert len({n for n in names if "cam1" in n}) == 1 and len({n for n in names if "cam2" in n}) == 1, names
