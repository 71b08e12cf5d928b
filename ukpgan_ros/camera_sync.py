"""Pair depth images with the CameraInfo of their stamp, whichever arrives first (ROS-free).

Policy (the node's ``depth_info_tolerance`` and ``depth_info_timeout`` parameters):

1. An image is paired with the CameraInfo whose stamp equals its own, or is the nearest within
   ``tolerance`` seconds. Whichever of the two arrives first waits in a short buffer for the
   other, as image_transport's camera subscriber and message_filters' exact-time policy do.
2. An image whose CameraInfo has not come after ``timeout`` seconds is paired with the latest
   CameraInfo if every CameraInfo kept (those of the last :attr:`CameraSync.HORIZON_S` seconds of
   stamps, at least the latest one) has the same intrinsics: a camera that publishes CameraInfo
   once (latched) or more slowly than images. After such a timeout (*fixed intrinsics*) images
   without a CameraInfo of their stamp are paired with the latest at once, until a CameraInfo
   with other intrinsics arrives, or one for an image already paired with the latest (it was
   late, not absent: the camera has one per image after all).
3. Otherwise the image is dropped with the reason ``no camera_info for stamp ...``.
4. When a newer image is paired, older images still waiting are resolved at once by rule 2 or 3
   (their CameraInfo would have arrived first: one publisher's messages arrive in order), so
   images leave in stamp order.

Stamps are integer nanoseconds; messages are opaque objects. The caller passes the time
(``now``, seconds of a monotonic clock), so the class is deterministic and needs no thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Hashable

__all__ = ["CameraSync", "Paired", "Unpaired", "intrinsics_key"]


@dataclass(frozen=True)
class Paired:
    """An image with the CameraInfo to back-project it with."""

    image: Any
    info: Any
    stamp_ns: int
    how: str  # "stamp" (exact or within tolerance) or "latest" (fixed intrinsics)


@dataclass(frozen=True)
class Unpaired:
    """An image dropped for want of a usable CameraInfo."""

    image: Any
    stamp_ns: int
    reason: str



def _seq(msg: Any, *names: str) -> tuple:
    for n in names:
        v = getattr(msg, n, None)
        if v is not None:
            try:
                return tuple(float(x) for x in v)
            except (TypeError, ValueError):
                return (repr(v),)
    return ()


def intrinsics_key(info: Any) -> Hashable:
    """What back-projection depends on in a CameraInfo (K, P, size, binning, ROI), hashable."""
    roi = getattr(info, "roi", None)
    roi_t = tuple(getattr(roi, a, 0) for a in ("x_offset", "y_offset", "width", "height")) if roi is not None else ()
    return (_seq(info, "k", "K"), _seq(info, "p", "P"), getattr(info, "width", 0), getattr(info, "height", 0),
            getattr(info, "binning_x", 0), getattr(info, "binning_y", 0), roi_t)


def _fmt(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


class CameraSync:
    """Buffers of waiting images and recent CameraInfos; see the module docstring for the policy.

    Every added image comes out exactly once, as :class:`Paired` or :class:`Unpaired`, from
    :meth:`add_image`, :meth:`add_info` or :meth:`poll` (or is counted by :meth:`clear`).
    """

    HORIZON_S = 1.0  # CameraInfos this much older (by stamp) than the newest image are forgotten
    MAX_INFOS = 64
    MAX_IMAGES = 64

    def __init__(self, tolerance_s: float = 0.0, timeout_s: float = 0.5) -> None:
        if not (tolerance_s >= 0 and timeout_s >= 0):
            raise ValueError(f"tolerance and timeout must be >= 0, got {tolerance_s}, {timeout_s}")
        self.tolerance_ns = int(round(tolerance_s * 1e9))
        self.timeout_s = float(timeout_s)
        self._infos: deque[tuple[int, Any, Hashable]] = deque()  # (stamp, info, key), arrival order
        self._images: deque[tuple[int, Any, float]] = deque()  # (stamp, image, deadline), arrival order
        self._newest_image_ns: int | None = None
        self.fixed = False  # images without their own CameraInfo take the latest at once
        self._guessed: deque[int] = deque(maxlen=self.MAX_IMAGES)  # stamps paired with the latest

    # ------------------------------------------------------------------ state
    @property
    def waiting(self) -> int:
        """Images waiting for their CameraInfo."""
        return len(self._images)

    def next_deadline(self) -> float | None:
        """When :meth:`poll` next has work (monotonic seconds), or None."""
        return min(d for _, _, d in self._images) if self._images else None

    def constant_intrinsics(self) -> bool:
        """True if there is a CameraInfo and every one kept has the latest's intrinsics."""
        if not self._infos:
            return False
        key = self._infos[-1][2]
        return all(k == key for _, _, k in self._infos)

    def clear(self) -> int:
        """Forget everything (deactivation); returns how many waiting images were discarded."""
        n = len(self._images)
        self._images.clear()
        self._infos.clear()
        self._newest_image_ns = None
        self.fixed = False
        self._guessed.clear()
        return n

    # ------------------------------------------------------------------ input
    def add_info(self, stamp: int, info: Any, now: float, key: Hashable | None = None) -> list:
        """A CameraInfo arrived; returns the images it (or a timeout) resolves, in stamp order."""
        key = intrinsics_key(info) if key is None else key
        if self._infos and key != self._infos[-1][2]:
            self.fixed = False  # the intrinsics changed: wait for each image's own again
        if self.fixed and any(abs(s - stamp) <= self.tolerance_ns for s in self._guessed):
            self.fixed = False  # the CameraInfo of an image paired with the latest came late, not never
        self._infos.append((stamp, info, key))
        self._prune_infos()
        out = []
        matched = {id(e) for e in self._images if abs(e[0] - stamp) <= self.tolerance_ns}
        if matched:  # before the timeouts: an info arriving right at an image's deadline still pairs
            newest = max(e[0] for e in self._images if id(e) in matched)
            for entry in self._take(lambda e: e[0] <= newest):
                if id(entry) in matched:
                    out.append(Paired(entry[1], self._best_info(entry[0])[1], entry[0], "stamp"))
                else:
                    out.append(self._give_up(entry[0], entry[1], waited="a newer image was paired first"))
        return out + self.poll(now)

    def add_image(self, stamp: int, image: Any, now: float) -> list:
        """An image arrived; returns what it (or a timeout) resolves, in stamp order."""
        out = self.poll(now)
        if self._newest_image_ns is None or stamp > self._newest_image_ns:
            self._newest_image_ns = stamp
            self._prune_infos()
        best = self._best_info(stamp)
        if best is not None:
            out += self._resolve_older(stamp + 1)
            out.append(Paired(image, best[1], stamp, "stamp"))
        elif self.fixed and self.constant_intrinsics():
            self._guessed.append(stamp)
            out.append(Paired(image, self._infos[-1][1], stamp, "latest"))
        else:
            self._images.append((stamp, image, now + self.timeout_s))
            while len(self._images) > self.MAX_IMAGES:
                out.append(self._give_up(*self._images.popleft()[:2], waited="the buffer was full"))
        return out

    def poll(self, now: float) -> list:
        """Resolve images that waited ``timeout`` seconds (by rule 2 or 3), oldest first."""
        out = []
        while self._images and self._images[0][2] <= now:
            stamp, image, _ = self._images.popleft()
            out.append(self._give_up(stamp, image, waited=f"waited {self.timeout_s:g} s", timed_out=True))
        if self.fixed and self._images and self.constant_intrinsics():
            # Fixed intrinsics: the images queued behind the one that timed out wait no longer.
            latest = self._infos[-1][1]
            for s, image, _ in self._take(lambda e: True):
                self._guessed.append(s)
                out.append(Paired(image, latest, s, "latest"))
        return out

    # ------------------------------------------------------------------ helpers
    def _best_info(self, stamp: int) -> tuple[int, Any, Hashable] | None:
        """The kept CameraInfo nearest to ``stamp`` within tolerance (the latest of equals)."""
        best = None
        for entry in self._infos:
            d = abs(entry[0] - stamp)
            if d <= self.tolerance_ns and (best is None or d <= abs(best[0] - stamp)):
                best = entry
        return best

    def _take(self, which) -> list:
        """Remove the waiting images for which ``which(entry)`` holds; return them in stamp order."""
        taken = [e for e in self._images if which(e)]
        self._images = deque(e for e in self._images if not which(e))
        return sorted(taken, key=lambda e: e[0])

    def _resolve_older(self, stamp: int) -> list:
        """Resolve the waiting images older than ``stamp`` (their CameraInfo is not coming)."""
        return [self._give_up(s, image, waited="a newer image was paired first")
                for s, image, _ in self._take(lambda e: e[0] < stamp)]

    def _give_up(self, stamp: int, image: Any, waited: str, timed_out: bool = False):
        """Rule 2 (latest CameraInfo) or rule 3 (drop with the reason). Only a timeout starts
        fixed-intrinsics mode: an image resolved because a newer one paired lost its CameraInfo
        in a stream that otherwise has one per image."""
        if self.constant_intrinsics():
            self.fixed = self.fixed or timed_out
            self._guessed.append(stamp)
            return Paired(image, self._infos[-1][1], stamp, "latest")
        if not self._infos:
            why = "no camera_info received yet"
        else:
            why = "the camera_info intrinsics changed within the last second, so the latest is not used"
        return Unpaired(image, stamp, f"no camera_info for stamp {_fmt(stamp)} ({waited}; {why})")

    def _prune_infos(self) -> None:
        """Keep at most MAX_INFOS, none older than HORIZON_S before the newest image; always the latest."""
        while len(self._infos) > self.MAX_INFOS:
            self._infos.popleft()
        if self._newest_image_ns is None:
            return
        horizon = self._newest_image_ns - int(self.HORIZON_S * 1e9) - self.tolerance_ns
        if self._infos:
            latest = self._infos[-1]
            self._infos = deque([*(e for e in list(self._infos)[:-1] if e[0] >= horizon), latest])
