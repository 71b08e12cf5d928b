"""Shared test fixtures: paths to the real data beside the project, skipping when absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"


def ros_domain(k: int) -> int:
    """A ROS domain id for this test process (k < 11 distinct per process): test runs on the same
    machine at the same time (two checkouts, a developer and CI) never see each other's nodes."""
    import os

    # 100..231: above the default domain 0 (where demos and users' nodes run), inside Fast DDS's 0..232
    return 100 + 11 * (os.getpid() % 12) + k


def need(path: Path) -> Path:
    """The path, or a skip saying which shared data set is missing."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the real data in ../shared (see README)")
    return path


@pytest.fixture
def one_torch_thread():
    """Model tests are tiny: one torch thread avoids oversubscribing a shared CPU (two threads
    on a loaded 2-core machine made SHOT of 18 k points take 41 s instead of 0.5 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def redkitchen_pair():
    """3DMatch redkitchen fragments 1 -> 0 with the benchmark's ground truth."""
    from ukpgan_ros.io import read_cloud, read_transform

    d = need(DATA / "3dmatch-redkitchen")
    return read_cloud(d / "cloud_bin_1.ply"), read_cloud(d / "cloud_bin_0.ply"), read_transform(d / "gt_T_0_from_1.txt")


@pytest.fixture(scope="session")
def seven_scenes():
    from ukpgan_ros.datasets import SevenScenesSequence

    return SevenScenesSequence(need(DATA / "7scenes-redkitchen"))


def random_rigid(rng: np.random.Generator, max_angle_deg: float = 180.0, max_t: float = 1.0) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(axis * np.radians(rng.uniform(0, max_angle_deg))).as_matrix()
    T[:3, 3] = rng.uniform(-max_t, max_t, 3)
    return T


def transform(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    return (points @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
