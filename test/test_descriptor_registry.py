"""The descriptor registry (``features/registry``): every kind's declared facts hold for what its
compute function returns on a real cloud, and every front end offers exactly its kinds."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

from conftest import DATA, need
from ukpgan_ros.config import DESCRIPTORS, ConfigError, PipelineConfig
from ukpgan_ros.features import compute_descriptors, descriptor_dim
from ukpgan_ros.features.registry import DESCRIPTOR_NAMES, descriptor, registered

VOXEL = 0.01  # PCL's bunny (bun0, ~15 cm across): ~300 working points


@pytest.fixture(scope="module")
def bunny():
    from ukpgan_ros.cloud import make_working_cloud
    from ukpgan_ros.io import read_cloud

    pts = read_cloud(need(DATA / "pcl-bunny" / "bun0.pcd"))
    cloud = make_working_cloud(pts, VOXEL, normal_radius=PipelineConfig(voxel_size=VOXEL).normal_radius,
                               viewpoint=pts.mean(0) + [0.0, 0.0, 1.0])
    assert 200 < len(cloud) < 1000 and np.isfinite(cloud.normals).all()
    return cloud


@pytest.mark.parametrize("kind", DESCRIPTOR_NAMES)
def test_compute_returns_the_declared_length_and_dense_rows_equal_keypoint_rows(bunny, kind):
    spec = descriptor(kind)
    radius = spec.radius(VOXEL)
    idx = np.random.default_rng(0).choice(len(bunny), 40, replace=False)
    sparse = compute_descriptors(kind, bunny.points, bunny.normals, idx, radius)
    dense = compute_descriptors(kind, bunny.points, bunny.normals, None, radius)
    assert sparse.shape == (40, spec.dim) and sparse.dtype == np.float32
    assert dense.shape == (len(bunny), spec.dim) and dense.dtype == np.float32
    assert descriptor_dim(kind) == spec.dim
    assert np.isfinite(dense).all()
    assert (np.abs(dense).sum(1) > 0).mean() > 0.9, "most points of a real surface get a descriptor"
    np.testing.assert_allclose(sparse, dense[idx], rtol=1e-5, atol=1e-6)
    assert compute_descriptors(kind, bunny.points, bunny.normals, np.zeros(0, np.int64), radius).shape == (0, spec.dim)


def test_declared_lengths_equal_the_implementations_constants():
    from ukpgan_ros.features.fpfh import FPFH_DIM
    from ukpgan_ros.features.shot import SHOT_DIM
    from ukpgan_ros.features.shot_cpu import SHOT_DIM as SHOT_CPU_DIM

    assert descriptor("fpfh").dim == FPFH_DIM
    assert descriptor("shot").dim == SHOT_DIM == SHOT_CPU_DIM


@pytest.mark.parametrize("kind", DESCRIPTOR_NAMES)
def test_radius_scales_with_the_voxel(kind):
    spec = descriptor(kind)
    assert spec.radius_voxels > 0
    for voxel in (0.01, 0.05, 0.3):
        cfg = PipelineConfig(voxel_size=voxel, descriptor=kind).validate()
        assert cfg.descriptor_radius() == pytest.approx(spec.radius_voxels * voxel)
        assert cfg.descriptor_radius(kind) == cfg.descriptor_radius() == spec.radius(voxel)
        assert cfg.descriptor_spec is spec
    assert PipelineConfig(voxel_size=0.1).descriptor_radius(kind) == pytest.approx(
        2 * PipelineConfig(voxel_size=0.05).descriptor_radius(kind))


def test_radii_are_open3d_and_pcl_defaults():
    """FPFH at 5 voxels (Open3D's registration examples), SHOT at 6 (PCL's 0.3 m on 5 cm)."""
    cfg = PipelineConfig(voxel_size=0.05)
    assert cfg.descriptor_radius("fpfh") == pytest.approx(0.25)
    assert cfg.descriptor_radius("shot") == pytest.approx(0.30)
    assert [d.name for d in registered() if d.dense_is_cheap] == ["fpfh"]


def test_front_ends_offer_exactly_the_registered_kinds():
    field = {f.name: f for f in dataclasses.fields(PipelineConfig)}["descriptor"]
    assert tuple(field.metadata["choices"]) == DESCRIPTORS == DESCRIPTOR_NAMES == tuple(d.name for d in registered())
    assert PipelineConfig().descriptor in DESCRIPTOR_NAMES
    from ukpgan_ros.evaluation.run import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    action = {a.dest: a for a in parser._actions}["descriptors"]
    assert tuple(action.choices) == DESCRIPTOR_NAMES


def test_unknown_kind_is_refused_naming_the_known_ones():
    for call in (lambda: descriptor("sift"), lambda: descriptor_dim("sift"),
                 lambda: compute_descriptors("sift", np.zeros((10, 3)), np.zeros((10, 3)), None, 0.1),
                 lambda: PipelineConfig().descriptor_radius("sift")):
        with pytest.raises(ValueError, match=r"unknown descriptor 'sift' \(one of: fpfh, shot\)"):
            call()
    with pytest.raises(ValueError, match="unknown descriptor None"):
        descriptor(None)
    with pytest.raises(ConfigError, match="descriptor: 'sift' is not one of fpfh, shot"):
        PipelineConfig.from_mapping({"descriptor": "sift"})


def test_map_loading_checks_the_kind_and_its_length(tmp_path):
    from ukpgan_ros.cloud import WorkingCloud
    from ukpgan_ros.detectors.base import Keypoints
    from ukpgan_ros.maps import KeyframeMap, MapFormatError, load_map, save_map
    from ukpgan_ros.registration import FrameFeatures

    rng = np.random.default_rng(2)
    pts = rng.normal(size=(30, 3)).astype(np.float32)
    nrm = np.tile(np.float32([0, 0, 1]), (30, 1))

    def saved(name: str, kind: str, dim: int):
        kmap = KeyframeMap(meta={"descriptor": kind})
        kps = Keypoints(pts[:5], np.ones(5, np.float32), np.arange(5))
        kmap.add(np.eye(4), FrameFeatures(WorkingCloud(pts, nrm, 30), kps, rng.random((5, dim), np.float32)))
        return save_map(kmap, tmp_path / name)

    assert load_map(saved("ok", "fpfh", 33)).get(0).features.descriptors.shape == (5, 33)
    with pytest.raises(MapFormatError, match="descriptor_dim: 16 but shot descriptors have 352"):
        load_map(saved("short", "shot", 16))
    folder = saved("unknown", "fpfh", 33)
    index = json.loads((folder / "map.json").read_text())
    (folder / "map.json").write_text(json.dumps(dict(index, descriptor="sift")))
    with pytest.raises(MapFormatError, match="descriptor: .sift. is none of"):
        load_map(folder)
