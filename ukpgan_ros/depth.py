"""Depth image + pinhole intrinsics -> 3D points, the way depth_image_proc does it."""

from __future__ import annotations

import numpy as np

__all__ = ["depth_to_points", "depth_to_metres"]


def depth_to_metres(depth: np.ndarray, encoding: str = "16UC1", depth_scale: float = 1000.0) -> np.ndarray:
    """Convert a raw depth image to float32 metres; invalid pixels become 0.

    ``16UC1``/``mono16`` is integer depth in units of ``1/depth_scale`` metres (millimetres by
    default, as Kinect/RealSense drivers publish); 0 and 65535 are invalid. ``32FC1`` is already
    metres; NaN, inf and non-positive values are invalid.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth image must be 2-D, got shape {depth.shape}")
    if encoding in ("16UC1", "mono16"):
        raw = depth.astype(np.uint16, copy=False)
        out = raw.astype(np.float32) / np.float32(depth_scale)
        out[(raw == 0) | (raw == 65535)] = 0.0
        return out
    if encoding == "32FC1":
        out = depth.astype(np.float32, copy=True)
        out[~np.isfinite(out) | (out <= 0)] = 0.0
        return out
    raise ValueError(f"unsupported depth encoding {encoding!r} (expected 16UC1, mono16 or 32FC1)")


def depth_to_points(
    depth_m: np.ndarray,
    K: np.ndarray,
    stride: int = 1,
    min_depth: float = 0.0,
    max_depth: float = np.inf,
) -> np.ndarray:
    """Back-project a metric depth image (H, W) with 3x3 intrinsics ``K`` to (N, 3) float32.

    Points are in the optical frame (x right, y down, z forward) of the camera, as
    depth_image_proc's ``point_cloud_xyz``. Pixels with depth <= 0, outside
    [min_depth, max_depth] or non-finite are dropped. ``stride`` > 1 takes every k-th row/column.
    """
    if depth_m.ndim != 2:
        raise ValueError(f"depth image must be 2-D, got shape {depth_m.shape}")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"invalid intrinsics K: {K.tolist()}")
    if stride < 1:
        raise ValueError("stride must be >= 1")
    z = depth_m[::stride, ::stride].astype(np.float32, copy=False)
    vs, us = np.nonzero(np.isfinite(z) & (z > 0) & (z >= min_depth) & (z <= max_depth))
    zv = z[vs, us]
    u = us.astype(np.float32) * stride
    v = vs.astype(np.float32) * stride
    fx, fy, cx, cy = (np.float32(K[0, 0]), np.float32(K[1, 1]), np.float32(K[0, 2]), np.float32(K[1, 2]))
    with np.errstate(over="ignore", invalid="ignore"):
        x = (u - cx) * zv / fx
        y = (v - cy) * zv / fy
    pts = np.stack([x, y, zv], axis=1).astype(np.float32, copy=False)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):  # only absurd depths overflow float32
        pts = pts[np.isfinite(x) & np.isfinite(y)]
    return pts
