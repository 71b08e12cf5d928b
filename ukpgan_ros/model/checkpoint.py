"""Saving and loading: the exported encoder (safetensors + JSON metadata) and resumable training
state (one torch file per run).

The exported file carries its own metadata in the safetensors header, so the weights alone are
enough to rebuild the encoder and its feature settings; the ``.json`` next to it is the same
record, readable by people and by tools that do not parse safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ukpgan_ros.device import resolve_device
from ukpgan_ros.io import regular_file
from ukpgan_ros.model.networks import Encoder, ModelConfig

__all__ = ["FORMAT", "export_encoder", "load_encoder", "read_metadata", "metadata_path", "check_finite"]

FORMAT = "ukpgan-encoder/1"
_HEADER_KEY = "ukpgan"


def metadata_path(weights: str | Path) -> Path:
    """The JSON record that sits next to exported weights."""
    return Path(weights).with_suffix(".json")


def export_encoder(path: str | Path, encoder: Encoder, model_cfg: ModelConfig, metadata: dict[str, Any]) -> Path:
    """Write the encoder's weights with ``metadata`` (must hold ``feature``) and the JSON twin."""
    if "feature" not in metadata:
        raise ValueError("metadata needs a 'feature' section (kind, radius_voxels)")
    record = {"format": FORMAT, "model": model_cfg.to_dict(), **metadata}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    text = json.dumps(record, indent=2, sort_keys=True)
    save_file(tensors, str(path), metadata={_HEADER_KEY: text})
    path.chmod(0o644)  # safetensors creates the file owner-only; shipped weights must be readable
    metadata_path(path).write_text(text + "\n")
    return path


def _weights_file(path: str | Path) -> Path:
    """``path`` as a readable regular file: FileNotFoundError when missing, ValueError when it is a
    directory, device, FIFO or socket, or cannot be opened (see :func:`ukpgan_ros.io.regular_file`)."""
    try:
        return regular_file(path, "UKPGAN weights file")
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc} (train with `ukpgan train` or set model_path)") from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record embedded in exported weights; clear errors for missing/corrupt files.

    Distinguishes a missing file (FileNotFoundError) from one that is not a regular file, cannot
    be read, is not a safetensors file or has no UKPGAN record (ValueError, saying which).
    """
    path = _weights_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a UKPGAN model: not a safetensors file ({exc})") from exc
    if _HEADER_KEY not in header:
        raise ValueError(f"{path}: safetensors file without UKPGAN metadata (key {_HEADER_KEY!r})")
    try:
        record = json.loads(header[_HEADER_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt UKPGAN metadata ({exc})") from exc
    if record.get("format") != FORMAT:
        raise ValueError(f"{path}: format {record.get('format')!r}, expected {FORMAT!r}")
    return record


def load_encoder(path: str | Path, device: torch.device | str = "cpu") -> tuple[Encoder, dict[str, Any]]:
    """Rebuild the exported encoder on ``device`` ('auto' allowed) in eval mode, with its metadata."""
    record = read_metadata(path)
    try:
        cfg = ModelConfig.from_dict(record["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a UKPGAN model: its recorded model config is invalid ({exc!r})") from None
    encoder = Encoder(cfg)
    try:
        state = load_file(str(path), device="cpu")
        encoder.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ValueError(f"{path}: weights do not match the recorded model config ({exc})") from exc
    check_finite(state, path)
    return encoder.to(resolve_device(device)).eval(), record


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Raise ValueError naming the tensors that hold NaN or inf (a diverged or corrupted model)."""
    bad = []
    for name, t in state.items():
        if t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append(f"{name} ({n} of {t.numel()})")
    if bad:
        raise ValueError(f"{path}: the model has non-finite weights (NaN/inf) in {len(bad)} of {len(state)} "
                         f"tensors: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; it is broken "
                         "(diverged training or a corrupted file)")
