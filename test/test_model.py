"""UKPGAN networks, losses and procedural shapes against slow references and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from ukpgan_ros.model.losses import (
    chamfer_distance,
    critic_loss,
    gradient_penalty,
    mirror_partner,
    sample_prior,
    symmetry_loss,
)
from ukpgan_ros.model.networks import Encoder, ModelConfig, UkpganNet, salient_code, tree_arch
from ukpgan_ros.model.shapes import SHAPE_KINDS, Part, random_rotation, random_shape, sample_surface

pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = ModelConfig(hidden_dim=32, hidden_layers=1, emb_dim=16, code_dim=32, critic_dims=(64, 16))


def test_tree_arch_products_and_validation() -> None:
    for levels in (2, 4, 6, 8):
        assert int(np.prod(tree_arch(levels, 2048))) == 2048
        assert int(np.prod(tree_arch(levels, 8192))) == 8192
    with pytest.raises(ValueError, match="num_points"):
        tree_arch(6, 3000)
    with pytest.raises(ValueError, match="tree_levels"):
        tree_arch(5, 2048)
    with pytest.raises(ValueError, match="norm"):
        ModelConfig(norm="batch")
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({"bogus": 1})


def test_encoder_is_per_point_and_block_invariant() -> None:
    torch.manual_seed(0)
    enc = Encoder(SMALL).eval()
    feats = torch.randn(1000, 352)
    full = enc.probabilities(feats, block=100000)
    np.testing.assert_allclose(enc.probabilities(feats, block=97).numpy(), full.numpy(), rtol=1e-5, atol=1e-6)
    perm = torch.randperm(1000)
    np.testing.assert_allclose(enc.probabilities(feats[perm]).numpy(), full[perm].numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        _, emb = enc(feats)
    np.testing.assert_allclose(emb.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert ((full > 0) & (full < 1)).all()
    assert enc.probabilities(torch.zeros(0, 352)).shape == (0,)
    with pytest.raises(ValueError, match="features"):
        enc.probabilities(torch.zeros(2, 3, 352))


def test_full_model_shapes_and_decoder_range() -> None:
    torch.manual_seed(0)
    net = UkpganNet(SMALL)
    logit, prob, emb, recon = net(torch.randn(2, 2048, 352))
    assert logit.shape == prob.shape == (2, 2048)
    assert emb.shape == (2, 2048, 16)
    assert recon.shape == (2, 2048, 3)
    assert recon.abs().max() < 1.0
    assert net.critic(prob).shape == (2,)
    # the generator parameters and the critic's are disjoint and together are everything
    gen = {id(p) for p in net.generator_parameters()}
    crit = {id(p) for p in net.critic.parameters()}
    assert not gen & crit and gen | crit == {id(p) for p in net.parameters()}


def test_critic_on_sorted_probabilities_ignores_point_order() -> None:
    torch.manual_seed(1)
    net = UkpganNet(SMALL)
    p = torch.rand(3, 2048)
    np.testing.assert_allclose(net.critic(p).detach(), net.critic(p[:, torch.randperm(2048)]).detach(), rtol=1e-5)


def test_salient_code_matches_loop_and_is_order_free() -> None:
    torch.manual_seed(2)
    prob = torch.rand(2, 50)
    emb = torch.nn.functional.normalize(torch.randn(2, 50, 8), dim=-1)
    code = salient_code(prob, emb)
    ref = torch.zeros(2, 16)
    for b in range(2):
        for n in range(50):
            for f in range(8):
                ref[b, f] = max(ref[b, f], prob[b, n] * max(emb[b, n, f], 0.0))
                ref[b, 8 + f] = max(ref[b, 8 + f], prob[b, n] * max(-emb[b, n, f], 0.0))
    np.testing.assert_allclose(code.numpy(), ref.numpy(), rtol=1e-6)
    perm = torch.randperm(50)
    np.testing.assert_allclose(salient_code(prob[:, perm], emb[:, perm]).numpy(), code.numpy())
    assert salient_code(torch.zeros(2, 50), emb).abs().max() == 0  # no keypoints, no information


def test_chamfer_matches_bruteforce() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 30, 3)), rng.normal(size=(2, 40, 3))
    ref = []
    for i in range(2):
        d = np.linalg.norm(a[i][:, None] - b[i][None], axis=-1)
        ref.append(d.min(1).mean() + d.min(0).mean())
    ta, tb = torch.tensor(a), torch.tensor(b)
    np.testing.assert_allclose(chamfer_distance(ta, tb).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(chamfer_distance(tb, ta).numpy(), ref, rtol=1e-10)
    assert chamfer_distance(ta, ta).abs().max() < 1e-6
    with pytest.raises(ValueError, match="chamfer"):
        chamfer_distance(ta[0], tb[0])


def test_prior_samples_follow_beta_and_are_reproducible() -> None:
    g = torch.Generator().manual_seed(0)
    s = sample_prior((50, 2048), 0.01, 0.05, g).double().flatten().numpy()
    beta = stats.beta(0.01, 0.05)
    for x in (1e-6, 1e-3, 0.5, 0.999):
        assert abs((s <= x).mean() - beta.cdf(x)) < 0.01
    s2 = sample_prior((50, 2048), 0.01, 0.05, torch.Generator().manual_seed(0)).flatten().numpy()
    np.testing.assert_array_equal(s.astype(np.float32), s2)
    s3 = sample_prior((20000,), 2.0, 5.0, torch.Generator().manual_seed(1)).double().numpy()
    assert stats.kstest(s3, stats.beta(2.0, 5.0).cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="concentrations"):
        sample_prior((3,), 0.0, 1.0)


def test_gradient_penalty_of_linear_critic_is_exact() -> None:
    critic = torch.nn.Linear(2048, 1)
    with torch.no_grad():
        critic.weight.fill_(0.0)
        critic.weight[0, :4] = torch.tensor([2.0, 0.0, 0.0, 0.0])  # gradient norm 2 everywhere
    fake, real = torch.rand(4, 2048), torch.rand(4, 2048)
    assert gradient_penalty(critic, fake, real).item() == pytest.approx(1.0)
    with torch.no_grad():
        critic.weight[0, 0] = 0.5
    assert gradient_penalty(critic, fake, real).item() == 0.0
    assert gradient_penalty(critic, fake, real, one_sided=False).item() == pytest.approx(0.25)
    # the critic loss rewards scoring real above fake
    with torch.no_grad():
        critic.weight.fill_(0.0)
        critic.bias.fill_(0.0)
        critic.weight[0, 0] = 1.0
    assert critic_loss(critic, torch.zeros(1, 2048), torch.ones(1, 2048)).item() == pytest.approx(-1.0)


def test_symmetry_loss_vanishes_on_mirror_symmetric_features() -> None:
    rng = np.random.default_rng(0)
    half = rng.uniform(0.1, 1, (100, 3))
    pts = np.concatenate([half, half * [-1, 1, 1]])
    partner = mirror_partner(torch.tensor(pts)[None])
    np.testing.assert_array_equal(partner[0].numpy(), np.r_[np.arange(100, 200), np.arange(100)])
    emb = torch.randn(1, 100, 8)
    logit = torch.randn(1, 100)
    sym_emb, sym_logit = torch.cat([emb, emb], 1), torch.cat([logit, logit], 1)
    assert symmetry_loss(sym_logit, sym_emb, partner).item() == 0.0
    assert symmetry_loss(torch.randn(1, 200), torch.randn(1, 200, 8), partner).item() > 0.1


def test_part_sampling_is_uniform_with_outward_normals() -> None:
    rng = np.random.default_rng(0)
    box = Part("box", (0.0, 0.0, 0.0), (0.1, 0.2, 0.4))
    p, n = box.sample(40000, rng)
    face_x = np.abs(p[:, 0]) > 0.1 - 1e-9
    assert face_x.mean() == pytest.approx(2 * 0.2 * 0.4 * 4 / box.area(), abs=0.01)
    for part in (box, Part("cylinder", (0, 0, 0), (0.2, 0.3), axis=0), Part("frustum", (0, 0, 0), (0.3, 0.1, 0.2)),
                 Part("ellipsoid", (0, 0, 0), (0.3, 0.1, 0.2))):
        p, n = part.sample(5000, rng)
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-9)
        assert (np.einsum("ij,ij->i", p, n) > 0).all()  # convex, centred at the origin
    # ellipsoid area formula against a fine triangulated sphere map
    ell = Part("ellipsoid", (0, 0, 0), (0.3, 0.1, 0.2))
    th, ph = np.meshgrid(np.linspace(0, np.pi, 400), np.linspace(0, 2 * np.pi, 800), indexing="ij")
    xyz = np.stack([0.3 * np.sin(th) * np.cos(ph), 0.1 * np.sin(th) * np.sin(ph), 0.2 * np.cos(th)], -1)
    du, dv = np.gradient(xyz, axis=0), np.gradient(xyz, axis=1)
    assert np.linalg.norm(np.cross(du, dv), axis=-1).sum() == pytest.approx(ell.area(), rel=0.02)


@pytest.mark.parametrize("kind", sorted(SHAPE_KINDS))
def test_shapes_are_normalised_and_mirror_symmetric(kind: str) -> None:
    rng = np.random.default_rng(3)
    shape = random_shape(rng, (kind,))
    p, n = sample_surface(shape, 4000, rng)
    assert p.shape == n.shape == (4000, 3) and p.dtype == np.float32
    assert np.linalg.norm(p, axis=1).max() == pytest.approx(0.9, abs=1e-5)
    mirrored = torch.tensor(p * [-1, 1, 1], dtype=torch.float32)[None]
    assert chamfer_distance(torch.tensor(p)[None], mirrored).item() < 0.05


def test_random_shape_validation_and_rotation() -> None:
    with pytest.raises(ValueError, match="unknown shape"):
        random_shape(np.random.default_rng(0), ("spaceship",))
    r = random_rotation(np.random.default_rng(0))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


# ------------------------------------------------------------------ data, training, checkpoints
from ukpgan_ros.model.checkpoint import export_encoder, load_encoder, read_metadata  # noqa: E402
from ukpgan_ros.model.dataset import DataOptions, SampleSet, build_dataset, parse_source, shape_sample  # noqa: E402
from ukpgan_ros.model.train import LOG_FIELDS, TrainOptions, train  # noqa: E402

TINY = ModelConfig(hidden_dim=16, hidden_layers=1, emb_dim=8, code_dim=16, critic_dims=(32,))


def _geometric_features(points, normals, radius, query_idx):
    """A cheap rotation-invariant stand-in for SHOT: neighbour-count histogram over radii."""
    from scipy.spatial import cKDTree

    tree = cKDTree(points)
    radii = np.linspace(radius / 8, radius, 8)
    counts = np.stack([[len(n) for n in tree.query_ball_point(points[query_idx], r)] for r in radii], 1)
    return np.repeat(counts / counts[:, -1:], 44, axis=1).astype(np.float32)  # 8 x 44 = 352


def _random_set(n: int = 6, seed: int = 0) -> SampleSet:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 2048, 3, generator=g) * 1.8 - 0.9
    partner = torch.full((n, 2048), -1, dtype=torch.long)
    partner[0] = torch.arange(2048).flip(0)  # one "symmetric" sample exercises the symmetry term
    return SampleSet(target, torch.rand(n, 2048, 352, generator=g).half(), partner, ["r"] * n)


def test_shape_sample_targets_and_features() -> None:
    opts = DataOptions(num_points=2048)
    calls = []

    def feats(points, normals, radius, query):
        calls.append((len(points), radius, len(query)))
        assert normals.shape == points.shape
        return _geometric_features(points, normals, radius, query)

    s = shape_sample(np.random.default_rng(0), opts, feats)
    assert s.target.shape == (2048, 3) and s.features.shape == (2048, 352)
    assert np.linalg.norm(s.target, axis=1).max() <= 0.95
    n_support, radius, n_query = calls[0]
    assert n_query == 2048 and 1.1 * 2048 <= n_support <= 1.6 * 2048 + 1
    # the voxel size adapts to the shape: the feature radius is radius_voxels voxels
    assert 0.005 < radius / opts.feature.radius_voxels < 0.1
    # mirror partners of a symmetric shape are mostly mutual
    assert (s.partner[s.partner] == np.arange(2048)).mean() > 0.5
    # a partial view (one viewpoint) keeps fewer surfaces and is not mirror symmetric
    part = shape_sample(np.random.default_rng(0), DataOptions(partial=1.0), _geometric_features)
    assert part.partner is None and part.target.shape == (2048, 3)
    # same generator seed, same sample (features computed after a random pose)
    s2 = shape_sample(np.random.default_rng(0), opts, _geometric_features)
    np.testing.assert_array_equal(s.target, s2.target)
    np.testing.assert_allclose(s.features, s2.features)


def test_build_dataset_caches_and_validates(tmp_path) -> None:
    opts = DataOptions()
    a = build_dataset(["shapes:2"], opts, cache_dir=tmp_path, features=_geometric_features, progress=False)
    assert len(a) == 2 and a.features.dtype == torch.float16
    assert len(list(tmp_path.glob("dataset-*.npz"))) == 1

    def boom(*_):
        raise AssertionError("cache not used")

    b = build_dataset(["shapes:2"], opts, cache_dir=tmp_path, features=boom, progress=False)
    assert torch.equal(a.features, b.features) and torch.equal(a.target, b.target)
    assert parse_source("shapes:5") == ("shapes", 5)
    for bad in ("shapes", "nowhere/at/all:3", "shapes:0"):
        with pytest.raises(ValueError):
            parse_source(bad)


def test_synthetic_lidar_source_crops_street_scans_at_the_lidar_voxel() -> None:
    from ukpgan_ros.model.dataset import LIDAR_STREET_SEED, LIDAR_VOXEL, iter_samples

    assert parse_source("synthetic_lidar:3") == ("synthetic_lidar", 3)
    with pytest.raises(ValueError, match="count"):
        parse_source("synthetic_lidar")
    calls = []

    def feats(points, normals, radius, query):
        calls.append((points, radius))
        return _geometric_features(points, normals, radius, query)

    opts = DataOptions(crops=1)
    out = list(iter_samples(["synthetic_lidar:3"], opts, feats))
    # three scans, the three motions in turn, none on the evaluation's street (seed 0)
    assert [lab.split("/")[1] for lab, _ in out] == ["drive", "fast_turn", "walk"]
    assert all(lab.startswith(f"synthetic_lidar#{LIDAR_STREET_SEED}/") for lab, _ in out)
    for (lab, sample), (points, radius) in zip(out, calls):
        assert sample.target.shape == (2048, 3) and sample.features.shape == (2048, 352) and sample.partner is None
        # the SHOT radius is radius_voxels LiDAR voxels (0.3 m), not the camera frames' 5 cm
        assert radius == pytest.approx(opts.feature.radius_voxels * LIDAR_VOXEL)
        # the support is the whole scan voxelised at 0.3 m (features see it after a random rotation):
        # neighbours sit about a voxel apart, and a street scan spans tens of metres
        from scipy.spatial import cKDTree

        nn = cKDTree(points).query(points, k=2)[0][:, 1]
        assert len(points) > 2048 and 0.5 * LIDAR_VOXEL < np.median(nn) < 1.5 * LIDAR_VOXEL
        assert np.linalg.norm(points - points.mean(0), axis=1).max() > 20


def _weights(net) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_training_is_deterministic_and_resumes_exactly(tmp_path) -> None:
    data = _random_set()
    opts = TrainOptions(steps=6, batch_size=2, log_every=2, checkpoint_every=3, model=TINY)
    net_a, rows_a = train(data, opts, torch.device("cpu"), tmp_path / "a", progress=False)
    net_b, _ = train(data, opts, torch.device("cpu"), tmp_path / "b", progress=False)
    assert torch.equal(_weights(net_a), _weights(net_b))
    other = TrainOptions(steps=6, batch_size=2, log_every=2, checkpoint_every=3, model=TINY, seed=1)
    assert not torch.equal(_weights(train(data, other, torch.device("cpu"), tmp_path / "s", progress=False)[0]),
                           _weights(net_a))
    # stop after 3 steps, then resume to 6: identical to the uninterrupted run
    half = TrainOptions(steps=3, batch_size=2, log_every=2, checkpoint_every=3, model=TINY)
    train(data, half, torch.device("cpu"), tmp_path / "c", progress=False)
    net_c, _ = train(data, opts, torch.device("cpu"), tmp_path / "c", resume=True, progress=False)
    assert torch.equal(_weights(net_c), _weights(net_a))
    header = (tmp_path / "a" / "train_log.csv").read_text().splitlines()[0]
    assert header.split(",") == list(LOG_FIELDS)
    assert [r["step"] for r in rows_a] == [2, 4, 6]
    assert all(np.isfinite(r[k]) for r in rows_a for k in LOG_FIELDS)
    with pytest.raises(FileNotFoundError, match="resume"):
        train(data, opts, torch.device("cpu"), tmp_path / "missing", resume=True, progress=False)
    with pytest.raises(ValueError, match="model config"):
        train(data, TrainOptions(steps=6, batch_size=2, model=SMALL), torch.device("cpu"), tmp_path / "c",
              resume=True, progress=False)


def test_training_reduces_reconstruction(tmp_path) -> None:
    rng = np.random.default_rng(0)
    pts, _ = sample_surface(random_shape(rng, ("table",)), 2048, rng)
    g = torch.Generator().manual_seed(0)
    data = SampleSet(torch.from_numpy(pts)[None].repeat(2, 1, 1), torch.rand(2, 2048, 352, generator=g).half(),
                     torch.full((2, 2048), -1, dtype=torch.long), ["r", "r"])
    opts = TrainOptions(steps=60, batch_size=2, log_every=10, lr=1e-2, model=TINY)
    _, rows = train(data, opts, torch.device("cpu"), tmp_path, progress=False)
    assert rows[-1]["loss_recon"] < 0.7 * rows[0]["loss_recon"]


def test_adversarial_training_pulls_probabilities_to_the_beta_prior(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    data = SampleSet(torch.rand(4, 2048, 3, generator=g), torch.randn(4, 2048, 352, generator=g).half(),
                     torch.full((4, 2048), -1, dtype=torch.long), ["r"] * 4)
    feats = data.features[0].float()
    start = UkpganNet(TINY).encoder.eval().probabilities(feats)
    assert ((start > 0.1) & (start < 0.9)).float().mean() > 0.9  # untrained: everything near 0.5
    opts = TrainOptions(steps=150, batch_size=2, log_every=50, lr=3e-3, recon_weight=0.0, model=TINY)
    net, _ = train(data, opts, torch.device("cpu"), tmp_path, progress=False)
    p = net.encoder.eval().probabilities(feats)
    share = (p > 0.5).float().mean().item()
    assert abs(share - TINY.prior_mean) < 0.08  # Beta(0.01, 0.05): 1/6 of points are keypoints
    assert ((p > 0.1) & (p < 0.9)).float().mean() < 0.15  # and the rest is bimodal


def test_export_and_load_roundtrip(tmp_path) -> None:
    torch.manual_seed(0)
    net = UkpganNet(TINY)
    path = export_encoder(tmp_path / "m.safetensors", net.encoder, TINY,
                          {"feature": {"kind": "shot", "radius_voxels": 6.0}, "note": "x"})
    enc, meta = load_encoder(path, "cpu")
    feats = torch.randn(100, 352)
    np.testing.assert_array_equal(enc.probabilities(feats).numpy(), net.encoder.eval().probabilities(feats).numpy())
    assert meta["note"] == "x" and meta["model"] == TINY.to_dict()
    assert (tmp_path / "m.json").is_file() and read_metadata(path) == meta
    with pytest.raises(FileNotFoundError, match="not found"):
        load_encoder(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_encoder(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="feature"):
        export_encoder(tmp_path / "x.safetensors", net.encoder, TINY, {})
