"""FPFH (Rusu 2009) through Open3D's tensor API, at chosen points with every point as support."""

from __future__ import annotations

import numpy as np
import open3d as o3d

__all__ = ["FPFH_DIM", "compute_fpfh"]

FPFH_DIM = 33


def compute_fpfh(points: np.ndarray, normals: np.ndarray, indices: np.ndarray | None, radius: float,
                 max_nn: int = 100) -> np.ndarray:
    """FPFH (Rusu 2009, Open3D) at ``indices`` (all points if None), using every point as support."""
    pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(points, np.float32)))
    pcd.point.normals = o3d.core.Tensor(np.ascontiguousarray(normals, np.float32))
    idx = None if indices is None else o3d.core.Tensor(np.ascontiguousarray(indices, np.int64))
    if idx is not None and len(indices) == 0:
        return np.zeros((0, FPFH_DIM), np.float32)
    feat = o3d.t.pipelines.registration.compute_fpfh_feature(pcd, max_nn=max_nn, radius=float(radius), indices=idx)
    return np.array(feat.numpy(), dtype=np.float32)  # a copy, not a view into Open3D memory
