"""UKPGAN's losses: Chamfer reconstruction, WGAN critic/generator terms with gradient penalty,
the Beta prior sampler and the optional mirror-symmetry consistency term."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn

__all__ = [
    "chamfer_distance",
    "sample_prior",
    "critic_loss",
    "generator_adversarial_loss",
    "gradient_penalty",
    "mirror_partner",
    "symmetry_loss",
]


def _nearest_both_ways(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Index of the nearest b for each a and vice versa; k-d trees on CPU, a distance matrix elsewhere."""
    if a.device.type == "cpu":
        ab = [cKDTree(y.numpy()).query(x.numpy())[1] for x, y in zip(a, b)]
        ba = [cKDTree(x.numpy()).query(y.numpy())[1] for x, y in zip(a, b)]
        return torch.from_numpy(np.stack(ab)).long(), torch.from_numpy(np.stack(ba)).long()
    with torch.no_grad():
        d = torch.cdist(a, b)
        return d.argmin(dim=2), d.argmin(dim=1)


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance (mean Euclidean nearest-neighbour distance both ways), (B,).

    Unsquared distances, as the authors' PyTorch code: less dominated by a few far points.
    Nearest neighbours are found without autograd and only the matched pairs are differentiated,
    which gives the same value and gradient as differentiating through the full distance matrix
    at a fraction of the cost.
    """
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"chamfer_distance needs (B, N, C) and (B, M, C), got {tuple(a.shape)}, {tuple(b.shape)}")
    nn_ab, nn_ba = _nearest_both_ways(a.detach(), b.detach())
    b_of_a = torch.gather(b, 1, nn_ab[..., None].expand(-1, -1, b.shape[-1]))
    a_of_b = torch.gather(a, 1, nn_ba[..., None].expand(-1, -1, a.shape[-1]))
    return (a - b_of_a).norm(dim=-1).mean(dim=1) + (b - a_of_b).norm(dim=-1).mean(dim=1)


def sample_prior(shape: torch.Size | tuple[int, ...], concentration1: float, concentration0: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """Samples of Beta(concentration1, concentration0) as float32 on the generator's device.

    Drawn as G1 / (G1 + G2) from two float64 Gammas with ``generator`` (torch.distributions
    takes no generator, so training would not be reproducible). Concentrations like 0.01 put
    ~40 % of float32 Gamma draws below the smallest normal number; float64 keeps them apart.
    Draws where both still underflow are resolved by a coin with the Beta's mean, the limit of
    its two point masses at 0 and 1.
    """
    if concentration1 <= 0 or concentration0 <= 0:
        raise ValueError("Beta concentrations must be > 0")
    device = generator.device if generator is not None else torch.device("cpu")
    kw = {"generator": generator} if generator is not None else {}
    a = torch.full(tuple(shape), float(concentration1), dtype=torch.float64, device=device)
    b = torch.full(tuple(shape), float(concentration0), dtype=torch.float64, device=device)
    ga = torch._standard_gamma(a, **kw)
    gb = torch._standard_gamma(b, **kw)
    out = ga / (ga + gb)
    tiny = torch.finfo(torch.float64).tiny
    degenerate = (ga <= tiny) & (gb <= tiny)
    coin = torch.rand(tuple(shape), dtype=torch.float64, device=device, **kw) < a / (a + b)
    out = torch.where(degenerate, coin.to(out.dtype), out)
    return out.clamp(0.0, 1.0).float()


def critic_loss(critic: nn.Module, fake: Tensor, real: Tensor) -> Tensor:
    """Wasserstein critic loss E[D(fake)] - E[D(real)] (critic learns to score real higher)."""
    return critic(fake).mean() - critic(real).mean()


def generator_adversarial_loss(critic: nn.Module, fake: Tensor) -> Tensor:
    """-E[D(fake)]: the encoder moves its probability vectors towards what the critic calls real."""
    return -critic(fake).mean()


def gradient_penalty(critic: nn.Module, fake: Tensor, real: Tensor, generator: torch.Generator | None = None,
                     one_sided: bool = True) -> Tensor:
    """WGAN-GP term on random interpolates of fake and real (B, N) vectors.

    One-sided (penalise only gradient norms above 1) as in the reference implementation.
    """
    gen_device = generator.device if generator is not None else fake.device
    t = torch.rand((fake.shape[0], 1), generator=generator, device=gen_device, dtype=fake.dtype).to(fake.device)
    x = (fake.detach() + t * (real - fake.detach())).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    excess = grad.norm(dim=-1) - 1.0
    if one_sided:
        excess = torch.relu(excess)
    return (excess**2).mean()


def mirror_partner(points: Tensor, axis: int = 0) -> Tensor:
    """For each point, the index of the point nearest to its mirror image across ``axis`` = 0."""
    mirrored = points.clone()
    mirrored[..., axis] = -mirrored[..., axis]
    return torch.cdist(points, mirrored).argmin(dim=-1)


def symmetry_loss(logit: Tensor, emb: Tensor, partner: Tensor) -> Tensor:
    """Mean L1 difference of each point's (embedding, logit) and its mirror partner's, for
    shapes aligned so that x -> -x is a symmetry."""
    out = torch.cat([emb, logit[..., None]], dim=-1)
    other = torch.gather(out, 1, partner[..., None].expand_as(out))
    return (other - out).abs().sum(dim=-1).mean()
