"""What the node's services, ``initialpose`` and parameter changes ask of the pipeline: checks
made at once in the callback, and jobs the worker runs between frames
(:class:`ukpgan_ros.ros.worker.FrameWorker`). Every handler answers what it meets (success
false with the reason, or a log line); none raises into the executor."""

from __future__ import annotations

import functools
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from ukpgan_ros.config import PipelineConfig
from ukpgan_ros.ros.messages import pose_with_covariance_to_matrix
from ukpgan_ros.ros.parameters import live_update

__all__ = ["guarded_service", "awaitable", "answer_reset", "answer_save_map", "reset_job", "parse_initialpose", "set_pose_job",
           "parameters_job", "RESET_WAIT_S"]

RESET_WAIT_S = 0.02  # ~/reset answers with the outcome if the worker is idle, else "from the next frame on"


def guarded_service(what: str):
    """A Trigger handler method that refuses before configure (``self._refuse``) and answers any
    exception as success false with the reason."""
    def wrap(handler):
        @functools.wraps(handler)
        def guarded(self, request, response):
            try:
                if self._worker is None:
                    return self._refuse(response, what)
                return handler(self, request, response)
            except Exception as e:  # noqa: BLE001 - a service never takes the node down
                response.success, response.message = False, f"{what} failed: {type(e).__name__}: {e}"
                self.get_logger().error(response.message)
                return response
        return guarded
    return wrap


def awaitable(fut: Future, executor):
    """An rclpy Future that completes (with ``fut`` itself, done) when the worker's
    concurrent.futures ``fut`` does: a coroutine callback awaits it, and ``executor`` is woken to
    resume the coroutine (rclpy schedules a done callback, which triggers its guard condition)."""
    from rclpy.task import Future as RclpyFuture

    bridge = RclpyFuture(executor=executor)
    bridge.add_done_callback(lambda _: None)  # completing it then wakes the executor
    fut.add_done_callback(bridge.set_result)
    return bridge


def answer_reset(fut: Future, response, logger):
    """~/reset's answer: the outcome if the worker ran it within RESET_WAIT_S, else queued."""
    try:
        fut.result(timeout=RESET_WAIT_S)
        response.message = "trajectory and keyframes forgotten; the model stays loaded"
    except FutureTimeout:
        response.message = ("trajectory and keyframes forgotten from the next frame on (the frame in progress "
                            "finishes first); the model stays loaded")
    response.success = True
    logger.info(f"reset: {response.message}")
    return response


def answer_save_map(fut: Future, response, logger):
    """~/save_map's answer from the worker's finished job: the folder and keyframe count, or why not."""
    try:
        folder, count = fut.result()
    except Exception as e:  # noqa: BLE001 - MapFormatError, OSError, RuntimeError (a symlink loop), ...
        response.success, response.message = False, f"save_map failed: {type(e).__name__}: {e}"
        logger.error(response.message)
        return response
    response.success, response.message = True, f"{count} keyframes written to {folder}"
    logger.info(f"save_map: {response.message}")
    return response


def reset_job(worker, pipeline) -> None:
    """Worker thread: forget the stream; the tracking counters follow."""
    pipeline.reset()
    with worker.cond:
        st = worker.stats
        st.tracking = pipeline.state.value if pipeline.state is not None else ""
        st.keyframes = 0 if pipeline.tracker is None or pipeline.tracker.map is None else len(pipeline.tracker.map)
        st.last_message = ""


def parse_initialpose(msg, odom_frame: str, logger) -> tuple[np.ndarray, np.ndarray] | None:
    """The pose and covariance of an ``initialpose`` message in ``odom_frame``, or None (logged).
    An empty frame_id is taken as odom_frame (logged); another frame is refused (no TF lookup)."""
    frame = msg.header.frame_id
    if not frame:
        logger.info(f"initialpose has no frame_id: taken to be in odom_frame '{odom_frame}'")
    elif frame != odom_frame:
        logger.error(f"initialpose ignored: it is in frame '{frame}', the node's poses are in "
                     f"odom_frame '{odom_frame}' (no TF lookup is made)")
        return None
    try:
        return pose_with_covariance_to_matrix(msg)
    except ValueError as e:
        logger.error(f"initialpose ignored: {e}")
        return None


def set_pose_job(T: np.ndarray, cov: np.ndarray, logger, pipeline) -> None:
    """Worker thread: the pose takes effect for the next frame."""
    try:
        text = pipeline.set_pose(T, cov)
    except ValueError as e:
        logger.error(f"initialpose ignored: {e}")
        return
    x, y, z = T[:3, 3]
    logger.info(f"initialpose: sensor at ({x:.3g}, {y:.3g}, {z:.3g}) m in {pipeline.cfg.odom_frame}; {text}")


def parameters_job(wanted: PipelineConfig, touched: set[str], logger, pipeline: Any) -> None:
    """Worker thread: the live fields of ``wanted`` take effect from the next frame."""
    pipeline.cfg, later = live_update(pipeline.cfg, wanted, touched)
    if later:
        verb = "takes" if len(later) == 1 else "take"
        logger.info(f"{', '.join(later)} {verb} effect at the next configure")
