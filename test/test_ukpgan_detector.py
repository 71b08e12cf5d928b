"""UkpganDetector: loading, block-wise inference, NMS output, rigid invariance, shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ukpgan_ros.cloud import voxel_downsample
from ukpgan_ros.features.normals import estimate_normals
from ukpgan_ros.config import DEFAULT_MODEL_PATH, PipelineConfig
from ukpgan_ros.detectors import make_detector
from ukpgan_ros.detectors.base import Detector
from ukpgan_ros.detectors.ukpgan import UkpganDetector
from ukpgan_ros.model.checkpoint import export_encoder, read_metadata
from ukpgan_ros.model.networks import ModelConfig, UkpganNet
from ukpgan_ros.model.shapes import random_rotation, random_shape, sample_surface

VOXEL = 0.05


pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = ModelConfig(hidden_dim=32, hidden_layers=1, emb_dim=8, code_dim=16, critic_dims=(32,))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = UkpganNet(CFG)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    return export_encoder(path, net.encoder, CFG, {"feature": {"kind": "shot", "radius_voxels": 6.0,
                                                               "normal_radius_voxels": 2.0, "dim": 352}})


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A few furniture shapes at metric scale, voxelised at 5 cm, with outward normals."""
    rng = np.random.default_rng(0)
    parts = []
    for i, kind in enumerate(("table", "chair")):
        p, _ = sample_surface(random_shape(rng, (kind,)), 20000, rng)
        parts.append(p * 1.2 + np.array([2.0 * i, 0.0, 0.0], np.float32))
    pts = voxel_downsample(np.concatenate(parts), VOXEL)
    pts = pts[np.lexsort(pts.T[::-1])]
    return pts, estimate_normals(pts, 2 * VOXEL, viewpoint=(3.0, -6.0, 4.0))


def test_detects_sorted_separated_keypoints(model_file, scene) -> None:
    pts, nrm = scene
    det = UkpganDetector(model_file, device="cpu", voxel_size=VOXEL, nms_radius=0.15)
    assert isinstance(det, Detector) and det.name == "ukpgan"
    assert det.feature_radius == pytest.approx(0.3)
    kp = det.detect(pts, nrm, 40)
    assert len(kp) == 40
    assert (np.diff(kp.scores) <= 0).all()
    np.testing.assert_array_equal(kp.xyz, pts[kp.indices])
    d = np.linalg.norm(kp.xyz[:, None] - kp.xyz[None], axis=-1) + np.eye(40)
    assert d.min() > 0.15
    prob = det.probabilities(pts, nrm)
    np.testing.assert_allclose(kp.scores, prob[kp.indices])
    assert kp.scores[0] == pytest.approx(prob.max())
    assert len(det.detect(pts, None, 10)) == 10  # estimates its own normals
    assert len(det.detect(pts[:0], None, 10)) == 0


def test_threshold_is_a_floor(model_file, scene) -> None:
    pts, nrm = scene
    loose = UkpganDetector(model_file, device="cpu", voxel_size=VOXEL, nms_radius=0.1)
    prob = loose.probabilities(pts, nrm)
    floor = float(np.quantile(prob, 0.99))
    strict = UkpganDetector(model_file, device="cpu", voxel_size=VOXEL, nms_radius=0.1, prob_threshold=floor)
    kp = strict.detect(pts, nrm, 1000)
    assert 0 < len(kp) <= (prob >= floor).sum() and (kp.scores >= floor).all()
    # the unthresholded detector returns the same keypoints first, then fills the budget
    top = loose.detect(pts, nrm, 1000)
    np.testing.assert_array_equal(top.indices[:len(kp)], kp.indices)
    assert len(top) > len(kp)


def test_block_size_does_not_change_probabilities(model_file, scene) -> None:
    pts, nrm = scene
    a = UkpganDetector(model_file, device="cpu", voxel_size=VOXEL, block=100000).probabilities(pts, nrm)
    b = UkpganDetector(model_file, device="cpu", voxel_size=VOXEL, block=777).probabilities(pts, nrm)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_keypoints_move_with_the_cloud(model_file, scene) -> None:
    pts, nrm = scene
    det = UkpganDetector(model_file, device="cpu", voxel_size=VOXEL, nms_radius=0.15)
    base = det.detect(pts, nrm, 60)
    rng = np.random.default_rng(5)
    for _ in range(2):
        R = random_rotation(rng).astype(np.float32)
        t = rng.uniform(-10, 10, 3).astype(np.float32)
        moved = det.detect(pts @ R.T + t, nrm @ R.T, 60)
        back = (moved.xyz - t) @ R  # into the original frame
        # SHOT's frame is rotation invariant up to float rounding: the same points come back
        same = np.linalg.norm(back[:, None] - base.xyz[None], axis=-1).min(axis=1) < 1e-3
        assert same.mean() >= 0.9
        p0 = det.probabilities(pts, nrm)
        p1 = det.probabilities(pts @ R.T + t, nrm @ R.T)
        assert np.median(np.abs(p0 - p1)) < 1e-4


def test_bad_inputs_and_release(model_file, scene, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        UkpganDetector(tmp_path / "missing.safetensors", device="cpu")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}\x00garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        UkpganDetector(bad, device="cpu")
    for kw in ({"voxel_size": 0.0}, {"nms_radius": -1.0}, {"prob_threshold": 1.5}, {"block": 0}):
        with pytest.raises(ValueError):
            UkpganDetector(model_file, device="cpu", **kw)
    det = UkpganDetector(model_file, device="cpu")
    with pytest.raises(ValueError, match="points"):
        det.detect(np.zeros((5, 2), np.float32), None, 5)
    with pytest.raises(ValueError, match="normals"):
        det.detect(scene[0], scene[1][:5], 5)
    det.release()
    with pytest.raises(RuntimeError, match="released"):
        det.detect(scene[0], scene[1], 5)


def test_make_detector_builds_it_from_the_config(model_file) -> None:
    cfg = PipelineConfig(detector="ukpgan", model_path=str(model_file), device="cpu", voxel_size=0.04)
    det = make_detector(cfg)
    assert isinstance(det, UkpganDetector)
    assert det.feature_radius == pytest.approx(6 * 0.04) and det.nms_radius == pytest.approx(1.5 * 0.04)
    det.release()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(model_file, scene) -> None:
    pts, nrm = scene
    cpu = UkpganDetector(model_file, device="cpu", voxel_size=VOXEL).probabilities(pts, nrm)
    det = UkpganDetector(model_file, device="cuda", voxel_size=VOXEL)
    gpu = det.probabilities(pts, nrm)
    assert np.median(np.abs(cpu - gpu)) < 1e-4
    det.release()


def test_shipped_weights_load_with_their_metadata() -> None:
    meta = read_metadata(DEFAULT_MODEL_PATH)
    assert meta["feature"]["kind"] == "shot" and meta["feature"]["radius_voxels"] > 0
    assert {"data", "command", "seed", "final_losses"} <= set(meta["training"])
    assert meta["prior"]["concentration1"] > 0 and meta["prior"]["concentration0"] > 0
    assert Path(DEFAULT_MODEL_PATH).with_suffix(".json").is_file()
    det = UkpganDetector(DEFAULT_MODEL_PATH, device="cpu")
    rng = np.random.default_rng(0)
    p, _ = sample_surface(random_shape(rng, ("table",)), 20000, rng)
    pts = voxel_downsample(p * 2.0, VOXEL)
    kp = det.detect(pts, None, 20)
    assert 0 < len(kp) <= 20


# ----------------------------------------------------------------------------- model files at configure


def _export_with(tmp_path, name: str, edit) -> Path:
    """A small exported model whose state dict ``edit`` changes before saving."""
    torch.manual_seed(0)
    net = UkpganNet(CFG)
    with torch.no_grad():
        edit(net.encoder)
    return export_encoder(tmp_path / name, net.encoder, CFG, {"feature": {"kind": "shot", "radius_voxels": 6.0,
                                                                          "normal_radius_voxels": 2.0, "dim": 352}})


def test_model_file_kinds_are_told_apart(tmp_path, monkeypatch) -> None:
    import os

    import ukpgan_ros.io as io_mod

    with pytest.raises(FileNotFoundError, match="UKPGAN weights file not found.*missing.safetensors"):
        UkpganDetector(tmp_path / "missing.safetensors", device="cpu")
    with pytest.raises(ValueError, match="is a directory, not a regular UKPGAN weights file"):
        UkpganDetector(tmp_path, device="cpu")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it would block forever: it must be refused without being opened
    with pytest.raises(ValueError, match="is a FIFO"):
        UkpganDetector(fifo, device="cpu")
    if Path("/dev/zero").exists():
        with pytest.raises(ValueError, match="is a character device"):
            UkpganDetector("/dev/zero", device="cpu")
    good = _export_with(tmp_path, "good.safetensors", lambda enc: None)
    real_open = os.open

    def denied(path, *a, **k):
        if str(path) == str(good):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(io_mod.os, "open", denied)
    with pytest.raises(ValueError, match="good.safetensors: UKPGAN weights file is not readable.*Permission denied"):
        UkpganDetector(good, device="cpu")
    monkeypatch.undo()
    (tmp_path / "text.safetensors").write_text("hello, not a model\n" * 10)
    with pytest.raises(ValueError, match="text.safetensors: not a UKPGAN model"):
        UkpganDetector(tmp_path / "text.safetensors", device="cpu")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="without UKPGAN metadata"):
        UkpganDetector(tmp_path / "other.safetensors", device="cpu")
    assert UkpganDetector(good, device="cpu").encoder is not None
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    if Path("/proc/self/fd").is_dir():
        before = fds()
        for _ in range(10):
            for bad in (tmp_path / "text.safetensors", tmp_path / "other.safetensors", tmp_path, fifo):
                with pytest.raises(ValueError):
                    UkpganDetector(bad, device="cpu")
        assert fds() == before  # no descriptor leaks on any failure path


def test_non_finite_weights_fail_at_load(tmp_path) -> None:
    def poison(enc):
        p = next(enc.parameters())
        p.view(-1)[:5] = float("nan")
        p.view(-1)[5] = float("inf")

    path = _export_with(tmp_path, "nan.safetensors", poison)
    with pytest.raises(ValueError, match=r"nan.safetensors: the model has non-finite weights.*\(6 of"):
        UkpganDetector(path, device="cpu")
    from ukpgan_ros.pipeline import KeypointPipeline  # what the node's on_configure builds

    with pytest.raises(ValueError, match="non-finite weights"):
        KeypointPipeline(PipelineConfig(model_path=str(path), device="cpu"))


def test_a_model_overflowing_on_the_probe_cloud_fails_configure(tmp_path) -> None:
    from ukpgan_ros.detectors.ukpgan import probe_cloud

    def blow_up(enc):
        for p in enc.parameters():
            p.mul_(1e30)  # finite weights whose products overflow float32

    path = _export_with(tmp_path, "huge.safetensors", blow_up)
    with pytest.raises(ValueError, match="huge.safetensors: the UKPGAN model gives non-finite keypoint probabilities"):
        UkpganDetector(path, device="cpu")
    pts = probe_cloud(0.05)
    assert pts.shape == (961, 3) and np.isfinite(pts).all()
    np.testing.assert_array_equal(probe_cloud(0.1), probe_cloud(0.1))
    prob = UkpganDetector(DEFAULT_MODEL_PATH, device="cpu").probabilities(pts)
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1
