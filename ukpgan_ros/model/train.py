"""``ukpgan train``: self-supervised UKPGAN training (WGAN-GP on probabilities vs a Beta prior +
salient-code reconstruction + optional symmetry), resumable and deterministic given the seed.

Each step updates the critic once on (detached) probability vectors against prior samples with
a gradient penalty, then the encoder/decoder on the critic's score plus ×10 Chamfer
reconstruction (+ ×0.1 mirror symmetry for symmetric shapes), Adam 1e-4 with weight decay 1e-4
and gradient clipping as the authors' code. Random draws of step ``s`` come from a generator
seeded by (seed, s), and batches from a per-epoch permutation seeded by (seed, epoch), so a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ukpgan_ros.device import resolve_device
from ukpgan_ros.model.checkpoint import export_encoder
from ukpgan_ros.model.dataset import DataOptions, SampleSet, build_dataset
from ukpgan_ros.model.features import FeatureSpec
from ukpgan_ros.model.losses import (
    chamfer_distance,
    critic_loss,
    generator_adversarial_loss,
    gradient_penalty,
    sample_prior,
    symmetry_loss,
)
from ukpgan_ros.model.networks import ModelConfig, UkpganNet

__all__ = ["TrainOptions", "train", "train_step", "add_arguments", "run", "final_losses", "LOG_FIELDS"]

# The shipped model's prior: Beta(0.01, 0.99), mean 0.01 (ukpgan_ros/weights/ukpgan.json says how
# it was chosen); the defaults of these flags reproduce the shipped model.
SHIPPED_BETA_BETA = 0.99

LOG_FIELDS = ("step", "epoch", "loss_critic", "loss_gp", "loss_adv", "loss_recon", "loss_sym",
              "prob_mean", "prob_keypoint_share", "seconds")


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    clip_norm: float = 0.3
    recon_weight: float = 10.0
    sym_weight: float = 0.1
    adv_weight: float = 1.0
    gp_weight: float = 1.0
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 250
    model: ModelConfig = field(default_factory=ModelConfig)


def _step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of one step's random draws (prior samples, penalty interpolation)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Batch of ``step`` from epoch permutations seeded by (seed, epoch); epochs cycle the data."""
    per_epoch = max(n // batch, 1)
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    if n < batch:
        return perm.repeat((batch + n - 1) // n)[:batch]
    return perm[pos * batch:(pos + 1) * batch]


def train_step(net: UkpganNet, opt_g: torch.optim.Optimizer, opt_c: torch.optim.Optimizer,
               batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], opts: TrainOptions,
               gen: torch.Generator) -> dict[str, float]:
    """One critic update and one encoder/decoder update; returns the losses."""
    target, feats, partner = batch
    cfg = net.cfg
    logit, prob, emb, recon = net(feats)
    real = sample_prior(prob.shape, cfg.beta_concentration1, cfg.beta_concentration0, gen).to(prob.device)

    loss_c = critic_loss(net.critic, prob.detach(), real)
    loss_gp = gradient_penalty(net.critic, prob, real, generator=gen)
    opt_c.zero_grad(set_to_none=True)
    (loss_c + opts.gp_weight * loss_gp).backward()
    torch.nn.utils.clip_grad_norm_(net.critic.parameters(), opts.clip_norm)
    opt_c.step()

    net.critic.requires_grad_(False)
    loss_adv = generator_adversarial_loss(net.critic, prob)
    net.critic.requires_grad_(True)
    loss_recon = chamfer_distance(recon, target).mean()
    sym = partner[:, 0] >= 0
    loss_sym = symmetry_loss(logit[sym], emb[sym], partner[sym]) if sym.any() else prob.new_zeros(())
    total = opts.adv_weight * loss_adv + opts.recon_weight * loss_recon + opts.sym_weight * loss_sym
    opt_g.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(net.generator_parameters(), opts.clip_norm)
    opt_g.step()
    with torch.no_grad():
        return {"loss_critic": loss_c.item(), "loss_gp": loss_gp.item(), "loss_adv": loss_adv.item(),
                "loss_recon": loss_recon.item(), "loss_sym": loss_sym.item(),
                "prob_mean": prob.mean().item(), "prob_keypoint_share": (prob > 0.5).float().mean().item()}


def _save_state(path: Path, net: UkpganNet, opt_g, opt_c, step: int, opts: TrainOptions) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": net.state_dict(), "opt_g": opt_g.state_dict(), "opt_c": opt_c.state_dict(),
                "model_cfg": net.cfg.to_dict(), "options": {k: v for k, v in asdict(opts).items() if k != "model"}},
               tmp)
    tmp.replace(path)


def train(data: SampleSet, opts: TrainOptions, device: torch.device, run_dir: str | Path,
          resume: bool = False, progress: bool = True) -> tuple[UkpganNet, list[dict[str, float]]]:
    """Train on ``data``; writes ``train_log.csv`` and ``checkpoint.pt`` into ``run_dir``.

    With ``resume`` the run continues from ``checkpoint.pt`` (same options required) to
    ``opts.steps``. Returns the network (on ``device``, train mode) and this call's log rows.
    """
    if opts.steps < 1 or opts.batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    if data.features.shape[1] != opts.model.num_points or data.features.shape[2] != opts.model.feature_dim:
        raise ValueError(f"data is {tuple(data.features.shape[1:])} per sample, model expects "
                         f"({opts.model.num_points}, {opts.model.feature_dim})")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    net = UkpganNet(opts.model).to(device)
    opt_g = torch.optim.Adam(net.generator_parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    opt_c = torch.optim.Adam(net.critic.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    ckpt, log_path = run_dir / "checkpoint.pt", run_dir / "train_log.csv"
    start = 0
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt}")
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state["model_cfg"] != opts.model.to_dict():
            raise ValueError(f"{ckpt}: model config differs from the requested one; resume with the same options")
        net.load_state_dict(state["model"])
        opt_g.load_state_dict(state["opt_g"])
        opt_c.load_state_dict(state["opt_c"])
        start = int(state["step"])
        _truncate_log(log_path, start)
    else:
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
    net.train()
    rows: list[dict[str, float]] = []
    from tqdm import tqdm

    bar = tqdm(total=opts.steps, initial=start, desc="train", unit="step", disable=not progress)
    t0 = time.perf_counter()
    per_epoch = max(len(data) // opts.batch_size, 1)
    acc: list[dict[str, float]] = []
    for step in range(start, opts.steps):
        idx = _batch_indices(len(data), opts.batch_size, opts.seed, step)
        gen = _step_generator(opts.seed, step)
        losses = train_step(net, opt_g, opt_c, data.batch(idx, device), opts, gen)
        acc.append(losses)
        done = step + 1
        if done % opts.log_every == 0 or done == opts.steps:
            row = {"step": done, "epoch": step // per_epoch,
                   **{k: float(np.mean([a[k] for a in acc])) for k in acc[0]},
                   "seconds": time.perf_counter() - t0}
            acc = []
            rows.append(row)
            with log_path.open("a", newline="") as f:
                csv.writer(f).writerow([row[k] for k in LOG_FIELDS])
            bar.set_postfix(recon=f"{row['loss_recon']:.4f}", kp=f"{row['prob_keypoint_share']:.2f}",
                            critic=f"{row['loss_critic']:.3f}")
        if done % opts.checkpoint_every == 0 or done == opts.steps:
            _save_state(ckpt, net, opt_g, opt_c, done, opts)
        bar.update(1)
    bar.close()
    return net, rows


def _truncate_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (written after the checkpoint we resume from)."""
    if not path.is_file():
        with path.open("w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(keep)


def _code_version() -> str:
    from ukpgan_ros import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ukpgan_ros/model"],
                               cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{__version__}+{commit or 'unknown'}{'-dirty' if dirty else ''}"


def final_losses(log_path: Path, last: int = 4) -> dict[str, float]:
    """Mean of the last ``last`` logged rows: the losses the exported model ended with."""
    with log_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    tail = rows[-last:]
    return {k: float(np.mean([float(r[k]) for r in tail])) for k in LOG_FIELDS if k not in ("step", "epoch", "seconds")}


# ------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``ukpgan train`` flags."""
    d, m, f = TrainOptions(), ModelConfig(), FeatureSpec()
    parser.add_argument("--data", nargs="+", default=["shapes:400", "synthetic:40"],
                        help="training sources: shapes:N, synthetic:N, synthetic_lidar:N, or a sequence/cloud folder PATH[:N]")
    parser.add_argument("--run-dir", default="runs/ukpgan", help="folder for cache, log and checkpoints")
    parser.add_argument("--export", default="", help="write the encoder here (.safetensors + .json); "
                        "default <run-dir>/ukpgan.safetensors")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoint.pt")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--clip-norm", type=float, default=d.clip_norm)
    parser.add_argument("--recon-weight", type=float, default=d.recon_weight)
    parser.add_argument("--sym-weight", type=float, default=d.sym_weight)
    parser.add_argument("--adv-weight", type=float, default=d.adv_weight)
    parser.add_argument("--gp-weight", type=float, default=d.gp_weight)
    parser.add_argument("--beta-alpha", type=float, default=m.beta_concentration1,
                        help="Beta prior concentration1 (mass at 1); with --beta-beta sets keypoint density")
    parser.add_argument("--beta-beta", type=float, default=SHIPPED_BETA_BETA,
                        help=f"Beta prior concentration0 (mass at 0); the paper's {m.beta_concentration0} makes 1/6 "
                             f"of points keypoints, the shipped {SHIPPED_BETA_BETA} 1/100, which ranks better for "
                             "registration budgets of 100-250 keypoints per frame")
    parser.add_argument("--hidden-dim", type=int, default=m.hidden_dim)
    parser.add_argument("--hidden-layers", type=int, default=m.hidden_layers)
    parser.add_argument("--emb-dim", type=int, default=m.emb_dim)
    parser.add_argument("--num-points", type=int, default=m.num_points)
    parser.add_argument("--radius-voxels", type=float, default=f.radius_voxels,
                        help="SHOT radius as a multiple of the cloud's voxel size")
    parser.add_argument("--scene-voxel", type=float, default=DataOptions().scene_voxel,
                        help="voxel size [m] for synthetic/real frames")
    parser.add_argument("--crops", type=int, default=DataOptions().crops, help="crops per scene frame")
    parser.add_argument("--partial", type=float, default=DataOptions().partial,
                        help="share of procedural shapes seen from one viewpoint only (0..1)")
    parser.add_argument("--log-every", type=int, default=d.log_every)
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--note", default="", help="free text stored in the exported metadata (e.g. why this recipe)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _options(args: argparse.Namespace) -> tuple[TrainOptions, DataOptions]:
    model = ModelConfig(hidden_dim=args.hidden_dim, hidden_layers=args.hidden_layers, emb_dim=args.emb_dim,
                        num_points=args.num_points, beta_concentration1=args.beta_alpha,
                        beta_concentration0=args.beta_beta)
    opts = TrainOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                        clip_norm=args.clip_norm, recon_weight=args.recon_weight, sym_weight=args.sym_weight,
                        adv_weight=args.adv_weight, gp_weight=args.gp_weight, seed=args.seed,
                        log_every=args.log_every, checkpoint_every=args.checkpoint_every, model=model)
    data = DataOptions(num_points=args.num_points, feature=FeatureSpec(radius_voxels=args.radius_voxels),
                       scene_voxel=args.scene_voxel, crops=args.crops, partial=args.partial, seed=args.seed)
    return opts, data


def run(args: argparse.Namespace) -> int:
    """Build/load the cached features, train, export the encoder with its metadata."""
    opts, data_opts = _options(args)
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    t0 = time.perf_counter()
    data = build_dataset(args.data, data_opts, cache_dir=run_dir, progress=not args.no_progress)
    t_data = time.perf_counter() - t0
    print(f"data: {len(data)} samples from {' '.join(args.data)} ({t_data:.0f} s)", file=sys.stderr)
    t0 = time.perf_counter()
    net, _ = train(data, opts, device, run_dir, resume=args.resume, progress=not args.no_progress)
    t_train = time.perf_counter() - t0
    export = Path(args.export) if args.export else run_dir / "ukpgan.safetensors"
    meta: dict[str, Any] = {
        "feature": data_opts.feature.to_dict(),
        "feature_note": "SHOT radius = radius_voxels x voxel_size of the cloud given to the detector; "
                        "normals from a PCA at normal_radius_voxels x voxel_size",
        "prior": {"distribution": "Beta", "concentration1": opts.model.beta_concentration1,
                  "concentration0": opts.model.beta_concentration0, "mean": opts.model.prior_mean},
        "prob_threshold": 0.5,
        "training": {
            "data": list(args.data), "samples": len(data), "data_options": data_opts.key(),
            "options": {k: v for k, v in asdict(opts).items() if k != "model"},
            "command": "ukpgan train " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["train"] else sys.argv[1:]),
            "seed": opts.seed, "device": str(device), "threads": torch.get_num_threads(),
            "seconds_features": round(t_data, 1), "seconds_training": round(t_train, 1),
            "final_losses": final_losses(run_dir / "train_log.csv"),
            **({"note": args.note} if args.note else {}),
        },
        "code_version": _code_version(),
        "torch": torch.__version__,
    }
    export_encoder(export, net.encoder, opts.model, meta)
    (run_dir / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    print(f"exported {export} (+ {export.with_suffix('.json').name}); "
          f"final losses {json.dumps(meta['training']['final_losses'])}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ukpgan train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
