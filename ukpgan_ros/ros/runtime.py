"""Process plumbing shared by the executables: signals -> lifecycle shutdown, spin, exit codes."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

import rclpy
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

__all__ = ["StopOnSignal", "spin_until_signal", "run_node"]


class StopOnSignal:
    """Turns SIGINT/SIGTERM into an Event for the lifetime of a ``with`` block.

    rclpy's own SIGINT handler would tear the context down before ``on_shutdown`` could run, so
    callers init rclpy with ``SignalHandlerOptions.NO`` and install this before doing anything
    that a user may interrupt.
    """

    def __enter__(self) -> threading.Event:
        self.stop = threading.Event()
        self._previous = {s: signal.signal(s, lambda *_: self.stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        return self.stop

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def spin_until_signal(nodes, stop: threading.Event, executor=None) -> None:
    """Spin until ``stop`` is set, then run each lifecycle node's shutdown transition."""
    executor = executor or SingleThreadedExecutor()
    for n in nodes:
        executor.add_node(n)
    try:
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    finally:
        for n in nodes:
            if isinstance(n, LifecycleNode):
                try:
                    n.trigger_shutdown()
                except Exception:  # noqa: BLE001 - already finalized
                    pass
        executor.shutdown()


def run_node(make_node: Callable[[], Node], args: list[str] | None = None,
             on_start: Callable[[Node], None] | None = None, threads: int = 1) -> int:
    """Init rclpy without its signal handler, build the node, spin until SIGINT/SIGTERM, then
    shut lifecycle nodes down cleanly. A node that cannot be built (bad parameters, missing
    files) exits with status 2 and one clear line. ``threads`` > 1 spins a MultiThreadedExecutor
    (callbacks of one mutually exclusive group still run one at a time; a reentrant group's
    callback that waits, such as the detector's ~/save_map, then blocks no other)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    with StopOnSignal() as stop:
        try:
            node = make_node()
        except (ValueError, FileNotFoundError) as e:
            print(f"{getattr(make_node, '__name__', 'node')}: {e}", file=sys.stderr, flush=True)
            rclpy.try_shutdown()
            return 2
        try:
            if on_start is not None:
                on_start(node)
            spin_until_signal([node], stop, MultiThreadedExecutor(threads) if threads > 1 else None)
        finally:
            node.destroy_node()
            rclpy.try_shutdown()
    return 0
