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
