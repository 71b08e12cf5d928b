"""The node's counters and the ``/diagnostics`` status built from them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

__all__ = ["FrameStats", "diagnostic_array"]


@dataclass
class FrameStats:
    """Counters and last values reported on /diagnostics.

    Every frame received ends in exactly one of processed, dropped, malformed, unpaired or
    errors, so ``received`` is their sum once the node is idle.
    """

    received: int = 0
    processed: int = 0
    dropped: int = 0  # replaced in the mailbox before the worker took them
    malformed: int = 0  # unparsable or unusable input (logged, skipped)
    unpaired: int = 0  # depth images whose CameraInfo never came (see ukpgan_ros.camera_sync)
    info_latest: int = 0  # depth images paired with the latest CameraInfo (fixed intrinsics), not their stamp's
    failed_registrations: int = 0  # frames that got no pose (registration and relocalisation failed)
    errors: int = 0  # unexpected exceptions in processing (logged with traceback)
    tracking: str = ""  # the tracker's state: initializing, tracking, failing, lost ("" in mode none)
    relocalizations: int = 0  # frames placed by relocalisation after a failure
    keyframes: int = 0
    last: dict[str, float] = field(default_factory=dict)
    last_message: str = ""
    started: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        """The counters and last values as a dict (tests, the demo summary)."""
        return {"received": self.received, "processed": self.processed, "dropped": self.dropped,
                "malformed": self.malformed, "unpaired": self.unpaired, "info_latest": self.info_latest,
                "failed": self.failed_registrations, "errors": self.errors,
                "tracking": self.tracking, "relocalizations": self.relocalizations, "keyframes": self.keyframes,
                **self.last}


def diagnostic_array(st: FrameStats, name: str, hardware_id: str, reliability: str, stamp,
                     extra: dict[str, Any] | None = None) -> DiagnosticArray:
    """One DiagnosticStatus: ERROR after processing errors or while tracking is lost ("lost"),
    WARN with the last drop or failed registration (or before the first frame), else OK; the
    counters and last timings as values."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id)
    if st.errors:
        status.level, status.message = DiagnosticStatus.ERROR, st.last_message or "processing errors"
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
        "frames_with_latest_camera_info": st.info_latest, "registrations_failed": st.failed_registrations,
        "errors": st.errors, "rate_hz": st.processed / elapsed, "reliability": reliability,
        "tracking": st.tracking, "relocalizations": st.relocalizations, "keyframes": st.keyframes,
    }
    values.update(extra or {})
    values.update(st.last)
    status.values = [KeyValue(key=k, value=f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()]
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
