"""The ``ukpgan_detector`` lifecycle node: a thin shell that wires parameters, topics, services
and lifecycle around :class:`ukpgan_ros.pipeline.KeypointPipeline`.

Services, created in on_configure and destroyed in on_cleanup (so they exist only once the node
is configured): ``~/reset`` and ``~/save_map`` (std_srvs/Trigger); the sensor is placed with a
``geometry_msgs/PoseWithCovarianceStamped`` on ``initialpose`` (what RViz publishes). Input: one
adapter per ``input`` kind (:mod:`.inputs`). Threading: one worker thread owns the pipeline
(:mod:`.worker`); requests are queued to it (:mod:`.requests`), so no callback waits for a frame:
save_map awaits its own answer as a coroutine, which frees the (single-threaded) executor meanwhile.
"""

from __future__ import annotations

import functools
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile
from std_srvs.srv import Trigger

from ukpgan_ros.config import PipelineConfig, StreamConfig
from ukpgan_ros.ros.diagnostics import FrameStats, diagnostic_array
from ukpgan_ros.ros.inputs import InputAdapter, make_input
from ukpgan_ros.ros.parameters import check_update, declare_parameters, read_configs
from ukpgan_ros.ros.requests import (answer_reset, answer_save_map, awaitable, guarded_service, parameters_job, parse_initialpose,
                                     reset_job, set_pose_job)
from ukpgan_ros.ros.worker import FrameWorker
from ukpgan_ros.transforms import stamp_ns

__all__ = ["UkpganDetectorNode", "main"]

STOP_WAIT_S = 30.0  # cleanup waits this long for the frame in progress


class UkpganDetectorNode(LifecycleNode):
    """Depth stream in; keypoints, markers, transforms, poses, odometry, TF and diagnostics out."""

    def __init__(self, node_name: str = "ukpgan_detector", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_names = declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._pipeline = None
        self._stream: StreamConfig | None = None
        self._pubs: dict[str, Any] = {}
        self._diag_pub = None
        self._tf = None
        self._diag_timer = None
        self._track_services: list[Any] = []
        self._initialpose_sub = None
        self._worker: FrameWorker | None = None
        self._input: InputAdapter | None = None
        self._stats = FrameStats()

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        """Reject values the pipeline would refuse, with the reason, at once; queue live ones."""
        try:
            result, wanted = check_update(self, self._param_names, params)
            worker = self._worker
            if result.successful and wanted is not None and worker is not None:
                touched = {p.name for p in params if p.name in self._param_names}
                worker.submit("parameter update", functools.partial(parameters_job, wanted, touched, self.get_logger()))
            return result
        except Exception as e:  # noqa: BLE001 - refuse, never raise into the parameter service
            return SetParametersResult(successful=False, reason=f"{type(e).__name__}: {e}")

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        # rclpy swallows exceptions raised here: turn every failure into FAILURE with a clear log.
        try:
            cfg, stream = read_configs(self, self._param_names)
            from ukpgan_ros.pipeline import KeypointPipeline

            pipeline = KeypointPipeline(cfg)
        except Exception as e:  # noqa: BLE001 - any load error must become a logged FAILURE
            self.get_logger().error(f"configure failed: {type(e).__name__}: {e}")
            return TransitionCallbackReturn.FAILURE
        self._stream, self._pipeline = stream, pipeline
        from ukpgan_ros.outputs import OUTPUT_TOPICS
        from ukpgan_ros.ros.render import message_class

        # the node's own output topics (/tf is made by _create_tf_publisher)
        self._pubs = {o.key: self.create_lifecycle_publisher(message_class(o.msgtype), o.topic, o.depth)
                      for o in OUTPUT_TOPICS if o.private}
        self._track_services = [
            self.create_service(Trigger, "~/reset", self._on_reset),
            self.create_service(Trigger, "~/save_map", self._on_save_map)]
        self._initialpose_sub = self.create_subscription(PoseWithCovarianceStamped, "initialpose",
                                                         self._on_initialpose, 10)
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        self._tf = self._create_tf_publisher()
        self._stats = FrameStats()
        self._worker = FrameWorker(pipeline, self._publish, self._stats, self.get_logger())
        self._worker.start()
        self._diag_timer = self.create_timer(stream.diagnostics_period, self._publish_diagnostics)
        self.get_logger().info(
            f"configured: detector={cfg.detector} descriptor={cfg.descriptor} voxel={cfg.voxel_size} m "
            f"registration={cfg.registration} input={stream.input}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # super() switches the lifecycle publishers on; without it they silently stay off.
        ret = super().on_activate(state)
        self._input = make_input(self, self._stream, self._worker)
        with self._worker.cond:
            self._worker.source = self._input
        self._input.subscribe()
        self.get_logger().info("active")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        ret = super().on_deactivate(state)
        self._worker.submit("free_cached_memory", lambda pipeline: pipeline.free_cached_memory())
        self.get_logger().info("inactive")
        return ret

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        self._release_all()
        self.get_logger().info("shut down")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def _stop_streaming(self) -> None:
        """Stop taking frames: the subscriptions go, frames held or parked count as dropped; a
        frame in progress finishes (its outputs go nowhere once the publishers are off)."""
        if self._input is not None:
            self._input.unsubscribe()
            with self._worker.cond:
                self._worker.source = None
            self._input = None
        if self._worker is not None:
            self._worker.discard()

    def _create_tf_publisher(self):
        """``/tf`` as tf2_ros's TransformBroadcaster publishes it (TFMessage, reliable, depth 100),
        but as a lifecycle publisher of this node, so deactivate silences it and cleanup removes
        it. Created whatever ``publish_tf`` says (a live parameter); None without tf2_msgs."""
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:
            self.get_logger().warning("tf2_msgs is not importable: TF broadcasting is off "
                                      "(~/pose and ~/transform are still published)")
            return None
        return self.create_lifecycle_publisher(TFMessage, "/tf", QoSProfile(depth=100))

    def _release_all(self) -> None:
        """Stop the worker, then destroy the timer, services and every publisher configure made
        (/tf included) and release the pipeline."""
        worker, self._worker = self._worker, None
        if worker is not None and not worker.stop(STOP_WAIT_S):
            self.get_logger().error(f"the frame in progress did not end within {STOP_WAIT_S:g} s")
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for srv in self._track_services:
            self.destroy_service(srv)
        self._track_services = []
        if self._initialpose_sub is not None:
            self.destroy_subscription(self._initialpose_sub)
            self._initialpose_sub = None
        pubs = [*self._pubs.values(), self._diag_pub, self._tf]
        self._pubs, self._diag_pub, self._tf = {}, None, None
        for pub in pubs:
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        if self._pipeline is not None:
            self._pipeline.release()
        self._pipeline = None

    # ------------------------------------------------------------------ services
    @guarded_service("reset")
    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Forget the trajectory and the keyframes before the next frame; keep the model (and a
        reference map). Answers at once: a frame in progress finishes first."""
        fut = self._worker.submit("reset", functools.partial(reset_job, self._worker))
        return answer_reset(fut, response, self.get_logger())

    async def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Write the keyframes to ``map_dir`` (format: ukpgan_ros/maps.py) between frames. A
        coroutine: while the worker finishes its frame and writes, the executor serves the rest
        (lifecycle queries, diagnostics, other services)."""
        try:
            if self._worker is None:
                return self._refuse(response, "save_map")
            done = await awaitable(self._worker.submit("save_map", lambda pipeline: pipeline.save_map(),
                                                       log_errors=False), self.executor)
            return answer_save_map(done, response, self.get_logger())
        except Exception as e:  # noqa: BLE001 - a service never takes the node down
            response.success, response.message = False, f"save_map failed: {type(e).__name__}: {e}"
            self.get_logger().error(response.message)
            return response

    def _refuse(self, response, what: str):
        """A service called in a lifecycle state without a pipeline: a clear failure, nothing changed."""
        state = self._state_machine.current_state[1] if hasattr(self, "_state_machine") else "unconfigured"
        response.success = False
        response.message = f"{what} refused: the node is {state}; configure it first"
        self.get_logger().warning(response.message)
        return response

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        """Place the sensor at the given pose in odom_frame (as RViz's "2D Pose Estimate" sends
        it), from the next frame on."""
        try:
            worker = self._worker
            if worker is None:
                self.get_logger().warning("initialpose ignored: the node is not configured")
                return
            pose = parse_initialpose(msg, worker.pipeline.cfg.odom_frame, self.get_logger())
            if pose is not None:
                worker.submit("initialpose", functools.partial(set_pose_job, *pose, self.get_logger()))
        except Exception as e:  # noqa: BLE001 - never raise into the executor
            self.get_logger().error(f"initialpose ignored: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ outputs
    def _publish(self, result, header, cfg: PipelineConfig) -> None:
        """What the frame publishes is decided in ukpgan_ros.outputs (the rules live there)."""
        from ukpgan_ros.outputs import OutputSettings, frame_outputs
        from ukpgan_ros.ros.render import render

        for out in frame_outputs(result, stamp_ns(header.stamp), header.frame_id, OutputSettings.from_config(cfg)):
            pub = self._tf if out.topic == "/tf" else self._pubs.get(out.key)
            if pub is not None:  # /tf is None without tf2_msgs
                pub.publish(render(out))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        """Timer: QoS re-subscription, the worker's watchdog, then /diagnostics."""
        try:
            worker, adapter = self._worker, self._input
            if worker is None:
                return
            if adapter is not None:
                adapter.maintain()
            worker.watch()
            reliability = adapter.reliability.name.lower() if adapter is not None and adapter.reliability else ""
            with worker.cond:
                self._stats.in_flight = worker.in_flight()
                # named by the fully qualified node name: two sensors' nodes report apart
                msg = diagnostic_array(self._stats, f"{self.get_fully_qualified_name()}: keypoints and registration",
                                       self.get_fully_qualified_name(), reliability, self.get_clock().now().to_msg(),
                                       adapter.diagnostics() if adapter is not None else {})
            if self._diag_pub is not None:
                self._diag_pub.publish(msg)
        except Exception as e:  # noqa: BLE001 - the timer never takes the node down
            self.get_logger().error(f"diagnostics failed: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    def diagnostics_snapshot(self) -> dict[str, Any]:
        """The counters, read consistently (for tests and the demo summary)."""
        worker = self._worker
        return worker.snapshot() if worker is not None else self._stats.snapshot()


def _autostart(node: UkpganDetectorNode) -> None:
    if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()


def main(args: list[str] | None = None) -> int:
    from ukpgan_ros.ros.runtime import run_node

    # One executor thread: rclpy's MultiThreadedExecutor halved the frames served (7-Scenes at 30 Hz:
    # 9.9 instead of 16.7 Hz, benchmarks/bench_node.py), and save_map's wait is a coroutine.
    return run_node(UkpganDetectorNode, args, on_start=_autostart)


if __name__ == "__main__":
    raise SystemExit(main())
