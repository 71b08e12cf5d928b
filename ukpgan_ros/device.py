"""Which torch device runs the detector and SHOT, decided in one place; and freeing its cache."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["resolve_device", "free_cached_memory"]


def resolve_device(name: "str | torch.device") -> "torch.device":
    """'auto' -> CUDA when available, else CPU; anything else as torch understands it.

    Raises ValueError for an unknown name or for CUDA on a machine without it.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}") from exc


def free_cached_memory() -> None:
    """Return torch's cached CUDA blocks to the driver (no-op without torch or CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
