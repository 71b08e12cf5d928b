"""The node's counters and the ``/diagnostics`` status built from them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["FrameStats", "diagnostic_array"]

_OUTCOMES = ("processed", "dropped", "malformed", "errors", "unpaired")


@dataclass
class FrameStats:
    """Counters and last values reported on /diagnostics.

    Every frame received ends in exactly one of processed, dropped, malformed, errors or
    unpaired, or is still in flight (parked in the mailbox, waiting for its CameraInfo, or being
    processed), so at every moment (read under the worker's lock)
    ``received == processed + dropped + malformed + errors + unpaired + in_flight``;
    :meth:`unaccounted` is the difference, and /diagnostics says ERROR if it is ever not 0.
    """

    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the mailbox before the worker took them, or discarded at deactivation
    malformed: int = 0  # unparsable or unusable input (logged, skipped)
    unpaired: int = 0  # depth images whose CameraInfo never came (see ukpgan_ros.camera_sync)
    errors: int = 0  # frames that raised anything else (conversion, pipeline, messages, publishing)
    in_flight: int = 0  # counted independently by the worker (mailbox, CameraInfo wait, in progress)
    info_latest: int = 0  # depth images paired with the latest CameraInfo (fixed intrinsics), not their stamp's
    failed_registrations: int = 0  # frames that got no pose (registration and relocalisation failed)
    consecutive_errors: int = 0  # errors since the last processed frame: /diagnostics is ERROR while > 0
    worker_restarts: int = 0  # the worker thread ended unexpectedly and was started again
    worker_error: str = ""  # why it ended, until the next processed frame
    tracking: str = ""  # the tracker's state: initializing, tracking, failing, lost ("" in mode none)
    relocalizations: int = 0  # frames placed by relocalisation after a failure
    keyframes: int = 0
    last: dict[str, float] = field(default_factory=dict)
    last_message: str = ""
    started: float = field(default_factory=time.monotonic)

    def unaccounted(self) -> int:
        """received minus every outcome and the frames in flight: 0 unless a frame got lost."""
        return self.received - sum(getattr(self, k) for k in _OUTCOMES) - self.in_flight

    def snapshot(self) -> dict[str, Any]:
        """The counters and last values as a dict (tests, the demo summary)."""
        return {"received": self.received, "processed": self.processed, "dropped": self.dropped,
                "malformed": self.malformed, "unpaired": self.unpaired, "info_latest": self.info_latest,
                "failed": self.failed_registrations, "errors": self.errors, "in_flight": self.in_flight,
                "worker_restarts": self.worker_restarts,
                "tracking": self.tracking, "relocalizations": self.relocalizations, "keyframes": self.keyframes,
                **self.last}

    def error(self, reason: str) -> None:
        """A frame failed with an unexpected exception (``reason`` names it)."""
        self.errors += 1
        self.consecutive_errors += 1
        self.last_message = reason

    def record(self, result, t_conv: float, latency: float, keyframes: int, odom_frame: str) -> list[tuple[str, str]]:
        """Book a processed frame (a pipeline FrameResult); returns (severity, text) lines to log."""
        logs = []
        self.last = {f"time_{k}_ms": v * 1e3 for k, v in result.timings.items()}
        self.last.update({"time_convert_ms": t_conv * 1e3, "latency_ms": latency * 1e3,
                          "input_points": float(result.input_points), "working_points": float(result.working_points),
                          "keypoints": float(len(result.keypoints))})
        reg, step = result.registration, result.tracking
        if reg is not None:
            self.last.update({"fitness": reg.fitness, "inlier_rmse_m": reg.inlier_rmse,
                              "inliers": float(reg.num_inliers), "correspondences": float(reg.num_correspondences)})
        if self.consecutive_errors or self.worker_error:
            self.last_message = f"recovered after {self.errors} frame error(s) in all"
            logs.append(("info", self.last_message))
        if step is not None:
            self.tracking, self.keyframes = step.state.value, keyframes
            if step.placed:
                self.last["position_sd_m"] = float(np.sqrt(max(0.0, np.max(np.diag(step.covariance)[:3]))))
                self.last_message = ""
                if step.relocalized:
                    self.relocalizations += 1
                    x, y, z = result.pose[:3, 3]
                    logs.append(("info", f"{step.message}; sensor at ({x:.3f}, {y:.3f}, {z:.3f}) m in {odom_frame}"))
            else:
                self.failed_registrations += 1
                self.last_message = f"registration failed: {step.message}"
                logs.append(("error" if step.state.value == "lost" else "warning",
                             f"lost: {self.last_message}" if step.state.value == "lost" else self.last_message))
        self.consecutive_errors, self.worker_error = 0, ""
        self.processed += 1  # last: readers of the counters see a finished frame
        return logs


def diagnostic_array(st: FrameStats, name: str, hardware_id: str, reliability: str, stamp,
                     extra: dict[str, Any] | None = None) -> DiagnosticArray:
    """One DiagnosticStatus: ERROR when the counters do not add up, while the worker thread is
    restarting after it died, while frames keep failing (since the last processed frame) or
    while tracking is lost ("lost"); WARN with the last drop, recovery or failed registration
    (or before the first frame); else OK. The counters and last timings as values."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id)
    missing = st.unaccounted()
    if missing:
        status.level = DiagnosticStatus.ERROR
        status.message = f"counters do not add up: {missing} received frame(s) unaccounted for"
    elif st.worker_error:
        status.level, status.message = DiagnosticStatus.ERROR, st.worker_error
    elif st.consecutive_errors:
        status.level = DiagnosticStatus.ERROR
        status.message = f"{st.consecutive_errors} frame(s) failed in a row; last: {st.last_message}"
    elif st.tracking == "lost":
        status.level = DiagnosticStatus.ERROR
        status.message = "lost" + (f": {st.last_message}" if st.last_message else "")
    elif st.last_message:
        status.level, status.message = DiagnosticStatus.WARN, st.last_message
    elif st.processed == 0:
        status.level, status.message = DiagnosticStatus.WARN, "no frame processed yet"
    else:
        status.level, status.message = DiagnosticStatus.OK, "ok"
    elapsed = max(1e-6, time.monotonic() - st.started)
    values = {
        "frames_received": st.received, "frames_processed": st.processed, "frames_dropped": st.dropped,
        "frames_malformed": st.malformed, "frames_without_camera_info": st.unpaired,
        "frames_with_latest_camera_info": st.info_latest, "frames_in_flight": st.in_flight,
        "registrations_failed": st.failed_registrations, "errors": st.errors, "worker_restarts": st.worker_restarts,
        "rate_hz": st.processed / elapsed, "reliability": reliability,
        "tracking": st.tracking, "relocalizations": st.relocalizations, "keyframes": st.keyframes,
    }
    values.update(extra or {})
    values.update(st.last)
    status.values = [KeyValue(key=k, value=f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
