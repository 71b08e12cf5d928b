"""UKPGAN's three networks: per-point encoder, probability critic and TopNet-style tree decoder.

Only the encoder is needed at inference; it is a shared per-point MLP on rotation-invariant
local features, so a scene can be processed in blocks of any size with identical results
(LayerNorm normalises each point on its own; BatchNorm would couple the points of a block).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
from torch import Tensor, nn

__all__ = [
    "ModelConfig",
    "Encoder",
    "Discriminator",
    "TreeDecoder",
    "UkpganNet",
    "salient_code",
    "tree_arch",
]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the networks and the Beta prior on keypoint probabilities (paper defaults)."""

    feature_dim: int = 352  # SHOT
    hidden_dim: int = 128
    hidden_layers: int = 3
    norm: str = "layer"  # "layer" or "none"
    emb_dim: int = 128  # F, unit embedding
    num_points: int = 2048  # points per training cloud (critic input and decoder output)
    code_dim: int = 256
    tree_nfeat: int = 8
    tree_levels: int = 6
    critic_dims: tuple[int, ...] = (512, 256, 128, 64)
    sort_probabilities: bool = True  # critic sees the sorted vector: a permutation-free statistic
    beta_concentration1: float = 0.01  # alpha of Beta(alpha, beta): mass near 1
    beta_concentration0: float = 0.05  # beta: mass near 0; mean alpha/(alpha+beta) sets density

    def __post_init__(self) -> None:
        if self.norm not in ("layer", "none"):
            raise ValueError(f"norm must be 'layer' or 'none', got {self.norm!r}")
        for name in ("feature_dim", "hidden_dim", "emb_dim", "num_points", "code_dim", "tree_nfeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_layers < 0:
            raise ValueError("hidden_layers must be >= 0")
        if self.beta_concentration1 <= 0 or self.beta_concentration0 <= 0:
            raise ValueError("Beta concentrations must be > 0")
        tree_arch(self.tree_levels, self.num_points)  # validates the pair

    @property
    def prior_mean(self) -> float:
        """Expected share of keypoints under the prior."""
        return self.beta_concentration1 / (self.beta_concentration1 + self.beta_concentration0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["critic_dims"] = list(self.critic_dims)
        return d

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config key(s): {', '.join(sorted(unknown))}")
        kw = dict(values)
        if "critic_dims" in kw:
            kw["critic_dims"] = tuple(int(v) for v in kw["critic_dims"])
        return cls(**kw)


def tree_arch(levels: int, num_points: int) -> list[int]:
    """Children per node at each tree level; the product is ``num_points`` (TopNet's layouts)."""
    base = {2: [32, 64], 4: [4, 8, 8, 8], 6: [2, 4, 4, 4, 4, 4], 8: [2, 2, 2, 2, 2, 4, 4, 4]}
    if levels not in base:
        raise ValueError(f"tree_levels must be one of {sorted(base)}, got {levels}")
    ratio = num_points / 2048
    doublings = round(math.log2(ratio)) if ratio > 0 else -1
    if doublings < 0 or 2048 * 2**doublings != num_points:
        raise ValueError(f"num_points must be 2048 * 2^k, got {num_points}")
    arch = list(base[levels])
    for _ in range(doublings):  # grow the last smallest level, as TopNet does
        smallest = min(arch)
        last = max(i for i, a in enumerate(arch) if a == smallest)
        arch[last] *= 2
    return arch


def _mlp(dims: list[int], norm: str = "none", last_activation: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2 or last_activation:
            if norm == "layer":
                layers.append(nn.LayerNorm(dims[i + 1]))
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Per-point MLP: local feature (…, D) -> (probability logit (…), unit embedding (…, F))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dims = [cfg.feature_dim] + [cfg.hidden_dim] * (cfg.hidden_layers + 1) + [cfg.emb_dim + 1]
        self.net = _mlp(dims, cfg.norm)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(features)
        logit = out[..., -1]
        emb = nn.functional.normalize(out[..., :-1], dim=-1)
        return logit, emb

    @torch.no_grad()
    def probabilities(self, features: Tensor, block: int = 65536) -> Tensor:
        """Keypoint probability of every row of (N, D) features, ``block`` rows at a time."""
        if features.ndim != 2:
            raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
        if block < 1:
            raise ValueError("block must be >= 1")
        out = [torch.sigmoid(self(features[s:s + block])[0]) for s in range(0, features.shape[0], block)]
        return torch.cat(out) if out else features.new_zeros(0)


class Discriminator(nn.Module):
    """WGAN critic on one cloud's vector of keypoint probabilities (B, N) -> (B,)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.sort = cfg.sort_probabilities
        self.net = _mlp([cfg.num_points, *cfg.critic_dims, 1])

    def forward(self, probs: Tensor) -> Tensor:
        if self.sort:
            probs = torch.sort(probs, dim=-1).values
        return self.net(probs).squeeze(-1)


class TreeDecoder(nn.Module):
    """TopNet decoder: a global code grows a rooted tree whose leaves are the output points."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.arch = tree_arch(cfg.tree_levels, cfg.num_points)
        self.nfeat = cfg.tree_nfeat
        self.root = _mlp([cfg.code_dim, 256, 64, cfg.tree_nfeat * self.arch[0]])
        nin = cfg.tree_nfeat + cfg.code_dim
        self.levels = nn.ModuleList()
        for i, children in enumerate(self.arch[1:], start=1):
            nout = 3 if i == len(self.arch) - 1 else cfg.tree_nfeat
            self.levels.append(_mlp([nin, nin // 2, nin // 4, nin // 8, nout * children]))

    def forward(self, code: Tensor) -> Tensor:
        b = code.shape[0]
        nodes = torch.tanh(self.root(code)).reshape(b, self.arch[0], self.nfeat)
        for level, children in zip(self.levels, self.arch[1:]):
            inp = torch.cat([nodes, code[:, None, :].expand(-1, nodes.shape[1], -1)], dim=-1)
            nodes = torch.tanh(level(inp)).reshape(b, nodes.shape[1] * children, -1)
        return nodes  # (B, num_points, 3) in (-1, 1)


def salient_code(prob: Tensor, emb: Tensor) -> Tensor:
    """Salient information distillation: probability-gated max pool of the embedding's two halves.

    (B, N), (B, N, F) -> (B, 2F). Only points with high probability can contribute, so the
    decoder's need for information pushes probability onto informative points.
    """
    gated = prob[..., None]
    pos = (torch.relu(emb) * gated).amax(dim=1)
    neg = (torch.relu(-emb) * gated).amax(dim=1)
    return torch.cat([pos, neg], dim=-1)


class UkpganNet(nn.Module):
    """All trainable parts; the encoder alone is exported for inference."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.critic = Discriminator(cfg)
        self.to_code = nn.Linear(2 * cfg.emb_dim, cfg.code_dim)
        self.decoder = TreeDecoder(cfg)

    def generator_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.to_code.parameters(), *self.decoder.parameters()]

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, N, D) features -> (logit (B, N), prob (B, N), emb (B, N, F), reconstruction (B, M, 3))."""
        logit, emb = self.encoder(features)
        prob = torch.sigmoid(logit)
        recon = self.decoder(self.to_code(salient_code(prob, emb)))
        return logit, prob, emb, recon
