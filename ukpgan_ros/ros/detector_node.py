"""The ``ukpgan_detector`` lifecycle node: a thin shell that wires topics, services, parameters
and lifecycle around :class:`ukpgan_ros.pipeline.KeypointPipeline`.

Services (created in on_configure, destroyed in on_cleanup; answered in the inactive and active
states): ``~/reset`` and ``~/save_map`` (std_srvs/Trigger); the sensor is placed with a
``geometry_msgs/PoseWithCovarianceStamped`` on ``initialpose`` (what RViz publishes).

Threading: subscription callbacks only park the newest message in a one-slot mailbox (a frame
that is replaced before it was processed counts as dropped); a worker thread converts and
processes it and publishes. The executor never blocks on the detector, and latency cannot grow
behind the camera.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
try:  # Iron and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from ukpgan_ros.camera_sync import CameraSync, Paired
from ukpgan_ros.transforms import stamp_ns, stamp_seconds
from ukpgan_ros.config import PipelineConfig, StreamConfig
from ukpgan_ros.pointcloud2 import CloudFormatError, depth_msgs_to_points, pointcloud2_to_xyz
from ukpgan_ros.ros.cloud_msgs import xyz_to_pointcloud2
from ukpgan_ros.ros.diagnostics import FrameStats, diagnostic_array
from ukpgan_ros.ros.messages import (keypoint_markers, matrix_to_pose_stamped, matrix_to_transform_stamped,
                                     odometry_msg, pose_with_covariance_to_matrix)
from ukpgan_ros.ros.parameters import check_update, declare_parameters, live_update, read_configs

__all__ = ["UkpganDetectorNode", "main"]


class UkpganDetectorNode(LifecycleNode):
    """Depth stream in; keypoints, markers, transforms, poses, odometry, TF and diagnostics out."""

    def __init__(self, node_name: str = "ukpgan_detector", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_names = declare_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._pipeline = None
        self._cfg: PipelineConfig | None = None
        self._stream: StreamConfig | None = None
        self._pubs: dict[str, Any] = {}
        self._diag_pub = None
        self._tf = None
        self._subs: list[Any] = []
        self._diag_timer = None
        self._track_services: list[Any] = []
        self._initialpose_sub = None
        self._sync: CameraSync | None = None  # depth input: images paired with their CameraInfo
        self._arrival: dict[int, float] = {}  # id(image) -> arrival time, while it waits for its CameraInfo
        self._mailbox: tuple[str, Any, float] | None = None
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._running = False
        self._reliability: ReliabilityPolicy | None = None
        self._incompatible = False
        self._incompatible_info = False
        self._info_sub = None
        self._stats = FrameStats()
        self._lock = threading.Lock()  # guards _pipeline/_cfg against reconfiguration

    # ------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params) -> SetParametersResult:
        """Reject values the pipeline would refuse, with the reason; apply live ones at once."""
        result, wanted = check_update(self, self._param_names, params)
        if not result.successful or wanted is None:
            return result
        with self._lock:
            if self._pipeline is not None:
                self._cfg, later = live_update(self._pipeline.cfg, wanted,
                                              {p.name for p in params if p.name in self._param_names})
                self._pipeline.cfg = self._cfg
                if later:
                    verb = "takes" if len(later) == 1 else "take"
                    self.get_logger().info(f"{', '.join(later)} {verb} effect at the next configure")
        return result

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
        with self._lock:
            self._cfg, self._stream, self._pipeline = cfg, stream, pipeline
        from ukpgan_ros.outputs import OUTPUT_TOPICS
        from ukpgan_ros.ros.render import message_class

        # the node's own output topics (/tf is made by _create_tf_publisher)
        self._pubs = {o.key: self.create_lifecycle_publisher(message_class(o.msgtype), o.topic, o.depth)
                      for o in OUTPUT_TOPICS if o.private}
        self._track_services = [self.create_service(Trigger, "~/reset", self._on_reset),
                                self.create_service(Trigger, "~/save_map", self._on_save_map)]
        self._initialpose_sub = self.create_subscription(PoseWithCovarianceStamped, "initialpose",
                                                         self._on_initialpose, 10)
        self._diag_pub = self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10)
        self._tf = self._create_tf_publisher()
        self._stats = FrameStats()
        self.get_logger().info(
            f"configured: detector={cfg.detector} descriptor={cfg.descriptor} voxel={cfg.voxel_size} m "
            f"registration={cfg.registration} input={stream.input}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        # super() switches the lifecycle publishers on; without it they silently stay off.
        ret = super().on_activate(state)
        self._create_subscriptions()
        self._running = True
        self._worker = threading.Thread(target=self._work, name="ukpgan_worker", daemon=True)
        self._worker.start()
        self._diag_timer = self.create_timer(self._stream.diagnostics_period, self._publish_diagnostics)
        self.get_logger().info("active")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_streaming()
        ret = super().on_deactivate(state)
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.free_cached_memory()
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
        """Stop taking frames: subscriptions first (they fire even while inactive), then the worker."""
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        with self._cond:
            self._running = False
            # Frames taken in but never to be processed: counted, so the counters add up.
            self._stats.dropped += (self._mailbox is not None) + (self._sync.clear() if self._sync else 0)
            self._mailbox = None
            self._sync = None
            self._arrival.clear()
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=30.0)
            self._worker = None

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
        """Destroy the services and every publisher configure made (/tf included) and the pipeline."""
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
        with self._lock:
            if self._pipeline is not None:
                self._pipeline.release()
            self._pipeline = None

    # ------------------------------------------------------------------ services
    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Forget the trajectory and the keyframes; keep the model (and a reference map)."""
        with self._lock:
            pipeline = self._pipeline
            if pipeline is not None:
                pipeline.reset()
                self._stats.tracking = pipeline.state.value if pipeline.state is not None else ""
                self._stats.keyframes = 0 if pipeline.tracker is None or pipeline.tracker.map is None \
                    else len(pipeline.tracker.map)
        if pipeline is None:
            return self._refuse(response, "reset")
        self._stats.last_message = ""
        response.success, response.message = True, "trajectory and keyframes forgotten; the model stays loaded"
        self.get_logger().info(f"reset: {response.message}")
        return response

    def _on_save_map(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """Write the keyframes to ``map_dir`` (format: ukpgan_ros/maps.py)."""
        with self._lock:
            pipeline = self._pipeline
            if pipeline is None:
                return self._refuse(response, "save_map")
            try:
                folder, count = pipeline.save_map()
            except (ValueError, OSError) as e:  # MapFormatError is a ValueError
                response.success, response.message = False, f"save_map failed: {e}"
                self.get_logger().error(response.message)
                return response
        response.success, response.message = True, f"{count} keyframes written to {folder}"
        self.get_logger().info(f"save_map: {response.message}")
        return response

    def _refuse(self, response, what: str):
        """A service called in a lifecycle state without a pipeline: a clear failure, nothing changed."""
        state = self._state_machine.current_state[1] if hasattr(self, "_state_machine") else "unconfigured"
        response.success = False
        response.message = f"{what} refused: the node is {state}; configure it first"
        self.get_logger().warning(response.message)
        return response

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        """Place the sensor at the given pose in odom_frame (as RViz's "2D Pose Estimate" sends it)."""
        with self._lock:
            pipeline, cfg = self._pipeline, self._cfg
            if pipeline is None or cfg is None:
                self.get_logger().warning("initialpose ignored: the node is not configured")
                return
            frame = msg.header.frame_id
            if frame and frame != cfg.odom_frame:
                self.get_logger().error(f"initialpose ignored: it is in frame '{frame}', the node's poses are in "
                                        f"odom_frame '{cfg.odom_frame}' (no TF lookup is made)")
                return
            try:
                T, cov = pose_with_covariance_to_matrix(msg)
                text = pipeline.set_pose(T, cov)
            except ValueError as e:
                self.get_logger().error(f"initialpose ignored: {e}")
                return
        x, y, z = T[:3, 3]
        self.get_logger().info(f"initialpose: sensor at ({x:.3f}, {y:.3f}, {z:.3f}) m in {cfg.odom_frame}; {text}")

    # ------------------------------------------------------------------ subscriptions
    def _choose_reliability(self, topic: str) -> ReliabilityPolicy:
        """auto: best effort if any publisher on the topic is best effort (a reliable reader
        would silently receive nothing from it), reliable otherwise."""
        wanted = self._stream.qos_reliability
        if wanted == "reliable":
            return ReliabilityPolicy.RELIABLE
        if wanted == "best_effort":
            return ReliabilityPolicy.BEST_EFFORT
        infos = self.get_publishers_info_by_topic(self.resolve_topic_name(topic))
        if any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
            return ReliabilityPolicy.BEST_EFFORT
        return ReliabilityPolicy.RELIABLE

    def _create_subscriptions(self) -> None:
        stream = self._stream
        topic = "cloud_in" if stream.input == "cloud" else "depth/image_raw"
        self._reliability = self._choose_reliability(topic)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=stream.qos_depth, reliability=self._reliability)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        if stream.input == "cloud":
            self._subs = [self.create_subscription(PointCloud2, "cloud_in", self._on_cloud, qos, event_callbacks=events)]
        else:
            with self._cond:
                if self._sync is None:  # kept (with the images it holds) across a re-subscription
                    self._sync = CameraSync(stream.depth_info_tolerance, stream.depth_info_timeout)
            self._subs = [
                self.create_subscription(Image, "depth/image_raw", self._on_depth, qos, event_callbacks=events),
                self._subscribe_camera_info(),
            ]
        self.get_logger().info(
            f"subscribed to {self.resolve_topic_name(topic)} ({self._reliability.name.lower()}, depth {stream.qos_depth})")

    def _on_incompatible_qos(self, event) -> None:
        if self._stream is not None and self._stream.qos_reliability == "auto":
            self._incompatible = True  # re-subscribed as best effort from the timer, not inside this callback
        else:
            self.get_logger().warning(
                f"a publisher's QoS is incompatible with this subscription ({event.last_policy_kind}); "
                "set qos_reliability:=best_effort or auto")

    def _subscribe_camera_info(self):
        """CameraInfo QoS follows its own publishers: best effort as ``qos_reliability`` says for
        the images, and transient local when every publisher is (a latched CameraInfo, published
        once before this node subscribed, then still arrives). If a publisher appears later that
        does not match, the subscription is made again from the diagnostics timer."""
        topic = "depth/camera_info"
        infos = self.get_publishers_info_by_topic(self.resolve_topic_name(topic))
        latched = bool(infos) and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
        reliability = self._choose_reliability(topic)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=max(5, self._stream.qos_depth), reliability=reliability,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_info_qos)
        self._info_sub = self.create_subscription(CameraInfo, topic, self._on_camera_info, qos, event_callbacks=events)
        return self._info_sub

    def _on_incompatible_info_qos(self, event) -> None:
        self._incompatible_info = True  # re-subscribed from the timer, not inside this callback

    def _post_locked(self, kind: str, payload: Any, received: float) -> None:
        """Park a frame in the mailbox (caller holds ``_cond``); a frame it replaces is dropped."""
        if self._mailbox is not None:
            self._stats.dropped += 1
        self._mailbox = (kind, payload, received)
        self._cond.notify()

    def _on_cloud(self, msg: PointCloud2) -> None:
        with self._cond:
            self._stats.received += 1
            self._post_locked("cloud", msg, time.monotonic())

    def _on_camera_info(self, msg: CameraInfo) -> None:
        with self._cond:
            if self._sync is not None:
                self._deliver(self._sync.add_info(stamp_ns(msg.header.stamp), msg, time.monotonic()))

    def _on_depth(self, msg: Image) -> None:
        now = time.monotonic()
        with self._cond:
            if self._sync is None:
                return
            self._stats.received += 1  # every image counts, also one whose CameraInfo never comes
            self._arrival[id(msg)] = now
            self._deliver(self._sync.add_image(stamp_ns(msg.header.stamp), msg, now))

    def _deliver(self, events: list) -> None:
        """Pairs from the CameraSync go to the mailbox, images without CameraInfo are counted
        drops (caller holds ``_cond``)."""
        for ev in events:
            received = self._arrival.pop(id(ev.image), time.monotonic())
            if isinstance(ev, Paired):
                if ev.how == "latest":
                    self._stats.info_latest += 1
                self._post_locked("depth", (ev.image, ev.info), received)
            else:
                self._stats.unpaired += 1
                self._stats.last_message = f"dropped frame: {ev.reason}"
                self.get_logger().warning(self._stats.last_message, throttle_duration_sec=2.0)

    # ------------------------------------------------------------------ processing
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._running and self._mailbox is None:
                    # Images that waited depth_info_timeout for their CameraInfo are due now.
                    deadline = self._sync.next_deadline() if self._sync is not None else None
                    wait = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
                    if wait > 0:
                        self._cond.wait(timeout=wait)
                    if self._sync is not None and self._running:
                        self._deliver(self._sync.poll(time.monotonic()))
                if not self._running:
                    return
                kind, payload, received = self._mailbox
                self._mailbox = None
            self._process(kind, payload, received)

    def _to_points(self, kind: str, payload: Any) -> tuple[np.ndarray, Any]:
        if kind == "cloud":
            return pointcloud2_to_xyz(payload), payload.header
        image, info = payload
        stream = self._stream
        pts = depth_msgs_to_points(image, info, stride=stream.depth_stride, depth_scale=stream.depth_scale)
        return pts, image.header

    def _process(self, kind: str, payload: Any, received: float) -> None:
        t0 = time.perf_counter()
        try:
            points, header = self._to_points(kind, payload)
            t_conv = time.perf_counter() - t0
            with self._lock:
                if self._pipeline is None:  # cleaned up meanwhile
                    self._stats.dropped += 1
                    return
                stamp = stamp_seconds(header.stamp)
                result = self._pipeline.process(points, stamp=stamp)
                cfg = self._cfg
                tracker = self._pipeline.tracker
                keyframes = len(tracker.map) if tracker is not None and tracker.map is not None else 0
        except (CloudFormatError, ValueError) as e:
            self._stats.malformed += 1
            self._stats.last_message = f"dropped frame: {e}"
            self.get_logger().warning(f"dropped frame: {e}", throttle_duration_sec=2.0)
            return
        except Exception as e:  # noqa: BLE001 - keep serving; report loudly
            self._stats.errors += 1
            self._stats.last_message = f"error: {type(e).__name__}: {e}"
            self.get_logger().error(f"processing failed: {e}\n{traceback.format_exc()}")
            return
        self._publish(result, header, cfg)
        st = self._stats
        st.last = {f"time_{k}_ms": v * 1e3 for k, v in result.timings.items()}
        st.last.update({
            "time_convert_ms": t_conv * 1e3,
            "latency_ms": (time.monotonic() - received) * 1e3,
            "input_points": float(result.input_points),
            "working_points": float(result.working_points),
            "keypoints": float(len(result.keypoints)),
        })
        reg, step = result.registration, result.tracking
        if reg is not None:
            st.last.update({"fitness": reg.fitness, "inlier_rmse_m": reg.inlier_rmse,
                            "inliers": float(reg.num_inliers), "correspondences": float(reg.num_correspondences)})
        if step is not None:
            st.tracking, st.keyframes = step.state.value, keyframes
            if step.placed:
                st.last["position_sd_m"] = float(np.sqrt(max(0.0, np.max(np.diag(step.covariance)[:3]))))
                st.last_message = ""
                if step.relocalized:
                    st.relocalizations += 1
                    x, y, z = result.pose[:3, 3]
                    self.get_logger().info(f"{step.message}; sensor at ({x:.3f}, {y:.3f}, {z:.3f}) m in {cfg.odom_frame}")
            else:
                st.failed_registrations += 1
                st.last_message = f"registration failed: {step.message}"
                if step.state.value == "lost":  # rclpy: one severity per throttled call site
                    self.get_logger().error(f"lost: {st.last_message}", throttle_duration_sec=2.0)
                else:
                    self.get_logger().warning(st.last_message, throttle_duration_sec=2.0)
        st.processed += 1  # last: readers of the counters see a finished frame

    def _publish(self, result, header, cfg: PipelineConfig) -> None:
        """What the frame publishes is decided in ukpgan_ros.outputs (the rules live there)."""
        from ukpgan_ros.outputs import OutputSettings, frame_outputs
        from ukpgan_ros.ros.render import render

        for out in frame_outputs(result, stamp_ns(header.stamp), header.frame_id, OutputSettings.from_config(cfg)):
            pub = self._tf if out.key == "tf" else self._pubs.get(out.key)
            if pub is not None:  # /tf is None without tf2_msgs
                pub.publish(render(out))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        if self._incompatible_info and self._info_sub in self._subs:
            self._incompatible_info = False
            self.get_logger().warning("a camera_info publisher with other QoS appeared: re-subscribing")
            self._subs.remove(self._info_sub)
            self.destroy_subscription(self._info_sub)
            self._subs.append(self._subscribe_camera_info())
        if self._incompatible:
            self._incompatible = False
            self.get_logger().warning("a best-effort publisher appeared: re-subscribing best effort")
            for sub in self._subs:
                self.destroy_subscription(sub)
            self._stream = StreamConfig(**{**self._stream.to_dict(), "qos_reliability": "best_effort"})
            self._create_subscriptions()
        reliability = self._reliability.name.lower() if self._reliability is not None else ""
        extra = {}
        if self._sync is not None:
            extra["camera_info_pairing"] = ("latest CameraInfo (fixed intrinsics: stamps do not match the images)"
                                            if self._sync.fixed else "by stamp")
        msg = diagnostic_array(self._stats, f"{self.get_name()}: keypoints and registration",
                               self.get_fully_qualified_name(), reliability, self.get_clock().now().to_msg(), extra)
        if self._diag_pub is not None:
            self._diag_pub.publish(msg)

    def diagnostics_snapshot(self) -> dict[str, Any]:
        """The counters, for tests and the demo summary."""
        return self._stats.snapshot()


def _autostart(node: UkpganDetectorNode) -> None:
    if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
        node.trigger_activate()


def main(args: list[str] | None = None) -> int:
    from ukpgan_ros.ros.runtime import run_node

    return run_node(UkpganDetectorNode, args, on_start=_autostart)


if __name__ == "__main__":
    raise SystemExit(main())
