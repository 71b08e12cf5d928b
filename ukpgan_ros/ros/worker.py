"""The detector node's one processing thread: a one-slot frame mailbox, a queue of jobs
(reset, initialpose, save_map, live parameters), per-frame error handling, and a watchdog.

Threading model: ROS callbacks (subscriptions, services, parameters, the diagnostics timer)
never touch the pipeline and never wait for a frame. Input callbacks park the newest frame in
the mailbox (a frame it replaces counts as dropped); requests that change the pipeline are
queued as jobs, which the worker runs between frames, in order, before the next frame. Only the
worker touches the pipeline (configure builds it before the worker starts, cleanup releases it
after the worker stopped). ``cond`` guards the mailbox, the jobs, the counters and the input
adapter's pairing state; it is held only for bookkeeping, never during a frame.

Everything a frame does (convert, process, build messages, publish, book the counters) runs
under the per-frame handler: unusable input (ValueError, e.g. CloudFormatError) is counted as
malformed, anything else as an error with its reason; the thread goes on. Should the thread end
anyway (a BaseException such as SystemExit), the frame it held is counted as an error and
:meth:`FrameWorker.watch` (called by the node's diagnostics timer and by every job submitted)
says so and starts a new thread.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable

from ukpgan_ros.ros.diagnostics import FrameStats
from ukpgan_ros.transforms import stamp_seconds

__all__ = ["FrameWorker"]


class FrameWorker:
    """Runs frames and jobs on one thread; see the module docstring."""

    def __init__(self, pipeline: Any, publish: Callable[[Any, Any, Any], None], stats: FrameStats, logger,
                 name: str = "ukpgan_worker") -> None:
        self.pipeline = pipeline
        self._publish = publish
        self.stats = stats
        self._log = logger
        self._name = name
        self.cond = threading.Condition()
        self.source = None  # the input adapter while streaming (its CameraInfo timeouts are polled here)
        self._slot: tuple[Any, Any, float] | None = None  # (adapter, payload, arrival time)
        self._jobs: deque[tuple[str, Callable[[Any], Any], Future]] = deque()
        self._busy: tuple[str, Future | None] | None = None  # ("frame", None) or (job name, its future)
        self._running = False
        self._thread: threading.Thread | None = None
        self._death = ""  # why the last thread ended unexpectedly

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self.cond:
            self._running = True
            self._spawn()

    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking frames and jobs (queued jobs fail, a parked frame is dropped); wait up to
        ``timeout`` s for the frame in progress. True if the thread ended."""
        with self.cond:
            self._running = False
            self.stats.dropped += self._slot is not None
            self._slot = None
            while self._jobs:
                _, _, fut = self._jobs.popleft()
                fut.set_exception(RuntimeError("the node stopped before the request was handled"))
            self.cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return thread is None or not thread.is_alive()

    def watch(self) -> str:
        """Restart the thread if it ended while it should run; returns what happened ("" if alive)."""
        with self.cond:
            thread = self._thread
            if not self._running or thread is None or thread.is_alive():
                return ""
            self.stats.worker_restarts += 1
            reason = self._death or "it ended without an exception"
            self.stats.worker_error = (f"worker thread died ({reason}); restarted "
                                       f"({self.stats.worker_restarts} restart(s))")
            self._death = ""
            self._spawn()
        self._log.error(self.stats.worker_error)
        return self.stats.worker_error

    # ------------------------------------------------------------------ input (callers hold cond)
    def post(self, adapter: Any, payload: Any, received: float) -> None:
        """Park a frame (caller holds ``cond``); a frame it replaces is dropped."""
        if self._slot is not None:
            self.stats.dropped += 1
        self._slot = (adapter, payload, received)
        self.cond.notify_all()

    def discard(self) -> int:
        """Drop the parked frame (deactivation); returns 1 if there was one."""
        with self.cond:
            n = int(self._slot is not None)
            self.stats.dropped += n
            self._slot = None
            return n

    def in_flight(self) -> int:
        """Frames received and not yet ended (caller holds ``cond``): parked, waiting inside the
        input adapter, or in progress. Counted from the structures, not from the counters."""
        held = self.source.held() if self.source is not None else 0
        return (self._slot is not None) + held + (self._busy is not None and self._busy[0] == "frame")

    def snapshot(self) -> dict[str, Any]:
        with self.cond:
            self.stats.in_flight = self.in_flight()
            return self.stats.snapshot()

    # ------------------------------------------------------------------ jobs
    def submit(self, name: str, fn: Callable[[Any], Any], log_errors: bool = True) -> Future:
        """Queue ``fn(pipeline)`` to run between frames; its Future holds the result or exception
        (logged here unless ``log_errors`` is False: the caller answers with it)."""
        self.watch()
        fut: Future = Future()
        with self.cond:
            if not self._running:
                fut.set_exception(RuntimeError("the node is not configured"))
                return fut
            self._jobs.append((name if log_errors else "", fn, fut))
            self.cond.notify_all()
        return fut

    # ------------------------------------------------------------------ the thread
    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - the thread must say why it ends
            with self.cond:
                self._death = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                busy, self._busy = self._busy, None
                if busy is not None and busy[0] == "frame":
                    self.stats.error(f"error: the worker thread died during the frame ({self._death})")
                elif busy is not None and busy[1] is not None and not busy[1].done():
                    busy[1].set_exception(RuntimeError(f"the worker thread died ({self._death})"))
            try:
                self._log.error(f"worker thread died: {self._death}\n{traceback.format_exc()}")
            except BaseException:  # noqa: BLE001 - logging at interpreter exit
                pass

    def _loop(self) -> None:
        while True:
            with self.cond:
                while self._running and not self._jobs and self._slot is None:
                    src = self.source
                    # Images that waited depth_info_timeout for their CameraInfo are due now.
                    deadline = src.next_deadline() if src is not None else None
                    wait = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
                    if wait > 0:
                        self.cond.wait(timeout=wait)
                    if self.source is not None and self._running:
                        self.source.poll(time.monotonic())
                if not self._running:
                    return
                if self._jobs:
                    name, fn, fut = self._jobs.popleft()
                    self._busy, frame = (name, fut), None
                else:
                    frame, self._slot = self._slot, None
                    self._busy = ("frame", None)
            if frame is None:
                self._run_job(name, fn, fut)
            else:
                self._run_frame(*frame)

    def _run_job(self, name: str, fn: Callable[[Any], Any], fut: Future) -> None:
        try:
            result = fn(self.pipeline)
        except Exception as e:  # noqa: BLE001 - a failed request is answered, never fatal
            if name:  # "": the caller answers with the error
                self._log.error(f"{name} failed: {type(e).__name__}: {e}")
            with self.cond:
                self._busy = None
            fut.set_exception(e)
            return
        with self.cond:
            self._busy = None
        fut.set_result(result)

    def _run_frame(self, adapter: Any, payload: Any, received: float) -> None:
        try:
            self._frame(adapter, payload, received)
        except Exception as e:  # noqa: BLE001 - keep serving; count and report loudly
            reason = f"error: {type(e).__name__}: {e}"
            with self.cond:
                self.stats.error(reason)
                self._busy = None
            self._log.error(f"frame failed: {reason}\n{traceback.format_exc()}", throttle_duration_sec=2.0)

    def _frame(self, adapter: Any, payload: Any, received: float) -> None:
        pipeline = self.pipeline
        t0 = time.perf_counter()
        try:
            points, header = adapter.points(payload)
            times = adapter.times(payload) if pipeline.cfg.deskew else None  # per-point, for deskewing
            t_conv = time.perf_counter() - t0
            result = pipeline.process(points, stamp=stamp_seconds(header.stamp), times=times)
        except ValueError as e:  # unusable input (CloudFormatError, EmptyCloudError): the state is unchanged
            with self.cond:
                self.stats.malformed += 1
                self.stats.last_message = f"dropped frame: {e}"
                self._busy = None
            self._log.warning(f"dropped frame: {e}", throttle_duration_sec=2.0)
            return
        cfg = pipeline.cfg
        self._publish(result, header, cfg)
        tracker = pipeline.tracker
        keyframes = len(tracker.map) if tracker is not None and tracker.map is not None else 0
        with self.cond:
            logs = self.stats.record(result, t_conv, time.monotonic() - received, keyframes, cfg.odom_frame)
            self._busy = None
        for severity, text in logs:  # rclpy: one severity per throttled call site
            if severity == "error":
                self._log.error(text, throttle_duration_sec=2.0)
            elif severity == "warning":
                self._log.warning(text, throttle_duration_sec=2.0)
            else:
                self._log.info(text)
