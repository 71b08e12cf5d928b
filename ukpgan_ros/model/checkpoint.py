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
from ukpgan_ros.model.networks import Encoder, ModelConfig

__all__ = ["FORMAT", "export_encoder", "load_encoder", "read_metadata", "metadata_path"]

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


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record embedded in exported weights; clear errors for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UKPGAN weights not found: {path} (train with `ukpgan train` or set model_path)")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
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
    cfg = ModelConfig.from_dict(record["model"])
    encoder = Encoder(cfg)
    try:
        state = load_file(str(path), device="cpu")
        encoder.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise ValueError(f"{path}: weights do not match the recorded model config ({exc})") from exc
    return encoder.to(resolve_device(device)).eval(), record
