"""A real loop from any sequence: forward over the even frames, back over the odd ones.

The project's recorded sequences never revisit a place. Played "there and back", the sensor
walks the covered frames forward on the even ones (0, 2, 4, ...) and returns on the odd ones in
reverse (..., 5, 3, 1), so it ends next to where it started having seen the way back through
different measurements (other frames, other noise): a loop to close, with ground truth. Frames
are re-indexed and re-stamped in playback order (stamps keep increasing at the source's rate,
as a player and a bag need); ``source_index`` maps a playback index to the source's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ukpgan_ros.datasets.base import DepthFrame, DepthSequence, IndexedSequence

__all__ = ["there_and_back", "ThereAndBackSequence"]


def there_and_back(indices: Sequence[int]) -> list[int]:
    """``indices`` played there and back: the even positions in order, then the odd positions
    in reverse (``[0, 1, 2, 3, 4, 5] -> [0, 2, 4, 5, 3, 1]``)."""
    idx = list(indices)
    return idx[0::2] + idx[1::2][::-1]


class ThereAndBackSequence(IndexedSequence):
    """``source``'s frames ``indices`` (default: all) played :func:`there_and_back`."""

    def __init__(self, source: DepthSequence, indices: Sequence[int] | None = None) -> None:
        idx = list(range(len(source))) if indices is None else [int(i) for i in indices]
        if not idx:
            raise ValueError("there-and-back needs at least one frame")
        n = len(source)
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise IndexError(f"frame index {bad[0]} out of range for {n} frames")
        self.source = source
        self.order = there_and_back(idx)
        self.name = f"{getattr(source, 'name', 'sequence')} there-and-back"
        self.rate_hz = float(source.rate_hz)
        self.K, self.width, self.height = source.K, source.width, source.height
        self.has_depth = bool(getattr(source, "has_depth", True))
        for attr in ("frame_id",):
            if hasattr(source, attr):
                setattr(self, attr, getattr(source, attr))
        self._t0: float | None = None

    def __len__(self) -> int:
        return len(self.order)

    def source_index(self, i: int) -> int:
        return self.order[self._index(i)]

    def __getitem__(self, i: int) -> DepthFrame:
        j = self._index(i)
        frame = self.source[self.order[j]]
        if self._t0 is None:
            self._t0 = float(self.source[self.order[0]].stamp) if j else float(frame.stamp)
        return replace(frame, index=j, stamp=self._t0 + j / max(self.rate_hz, 1e-9))

    def pose(self, i: int) -> np.ndarray | None:
        """Ground truth of playback frame ``i`` (the source's, when it has one)."""
        src = getattr(self.source, "pose", None)
        return src(self.order[self._index(i)]) if callable(src) else self[i].pose
