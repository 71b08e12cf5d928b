"""pip packaging: runtime dependencies declared as ranges the lock satisfies, ROS only in an extra,
and the commands that need no ROS work where rclpy cannot be imported."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _setup_kwargs() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: k.value for k in call.keywords}


def test_dependencies_are_ranges_the_lock_satisfies():
    from packaging.requirements import Requirement

    kw = _setup_kwargs()
    assert "tests_require" not in kw
    install = [Requirement(r) for r in ast.literal_eval(kw["install_requires"])]
    extras = {k: [Requirement(r) for r in v] for k, v in ast.literal_eval(kw["extras_require"]).items()}
    assert set(extras) == {"ros", "bench", "test"}
    assert not [r for r in install if r.name.startswith("ros-")], "ROS wheels belong to the [ros] extra"
    assert {r.name for r in extras["ros"]} >= {"ros-rclpy", "ros-sensor-msgs", "ros-geometry-msgs"}
    assert {str(r) for r in extras["bench"]} == {"small_gicp==1.0.1", "kiss-icp==1.3.0", "kiss-matcher==1.0.2"}
    lock = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            lock[req.name.lower()] = next(iter(req.specifier)).version
    for req in install + extras["ros"] + extras["test"]:
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: a range, the exact pin is the lock's"
        assert req.name.lower() in lock, f"{req.name} is not pinned in requirements.txt"
        assert req.specifier.contains(lock[req.name.lower()], prereleases=True), f"lock {lock[req.name.lower()]} outside {req}"
    imported = {"numpy", "scipy", "torch", "open3d", "matplotlib", "safetensors", "tqdm", "threadpoolctl", "rosbags",
                "numba", "gtsam"}
    assert {r.name.lower() for r in install} == imported


_NO_ROS = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {'rclpy', 'sensor_msgs', 'geometry_msgs', 'std_msgs', 'rcl_interfaces',
                                  'visualization_msgs', 'diagnostic_msgs', 'lifecycle_msgs', 'builtin_interfaces'}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from ukpgan_ros.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _run_without_ros(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _NO_ROS, *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_cli_without_ros(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.uniform(-1, 1, size=(3000, 3)).astype(np.float32))
    r = _run_without_ros("--help")
    assert r.returncode == 0 and "record" in r.stdout and "bag" in r.stdout, r.stderr
    r = _run_without_ros("detect", str(tmp_path / "c.npy"), "--detector", "iss", "--max-range", "10")
    assert r.returncode == 0 and "iss keypoints" in r.stdout, r.stderr
    r = _run_without_ros("demo", "--frames", "2")
    assert r.returncode == 2
    assert "needs rclpy" in r.stderr and "pip install 'ukpgan_ros[ros]'" in r.stderr and "Traceback" not in r.stderr
