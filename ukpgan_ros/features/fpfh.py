"""FPFH (Rusu 2009) through Open3D's tensor API, at chosen points with every point as support."""

from __future__ import annotations

import numpy as np
import open3d as o3d

__all__ = ["FPFH_DIM", "compute_fpfh"]

FPFH_DIM = 33


def compute_fpfh(points: np.ndarray, normals: np.ndarray, indices: np.ndarray | None, radius: float,
                 max_nn: int = 100) -> np.ndarray:
    """FPFH (Rusu 2009, Open3D) at ``indices`` (all points if None), using every point as support;
    row k describes ``points[indices[k]]`` (repeats allowed)."""
    pcd = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(points, np.float32)))
    pcd.point.normals = o3d.core.Tensor(np.ascontiguousarray(normals, np.float32))
    if indices is not None and len(indices) == 0:
        return np.zeros((0, FPFH_DIM), np.float32)
    inverse = idx = None
    if indices is not None:
        # Open3D returns the rows in ascending index order whatever the order asked for (and
        # keypoints come ranked by score): ask for the distinct indices, then put them in order
        unique, inverse = np.unique(np.asarray(indices, np.int64), return_inverse=True)
        idx = o3d.core.Tensor(unique)
    feat = o3d.t.pipelines.registration.compute_fpfh_feature(pcd, max_nn=max_nn, radius=float(radius), indices=idx)
    out = np.array(feat.numpy(), dtype=np.float32)  # a copy, not a view into Open3D memory
    return out if inverse is None else out[inverse.reshape(-1)]
