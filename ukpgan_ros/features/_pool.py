"""The CPU worker pool the torch features run their query chunks on (see :func:`_cpu_pool`)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch


_POOL_LOCK = threading.Lock()
_POOL: tuple[int, ThreadPoolExecutor | None] | None = None
_IN_WORKER = threading.local()


def _worker_init(barrier: threading.Barrier) -> None:
    _IN_WORKER.flag = True
    torch.get_num_threads()  # initialise this thread's OpenMP state before changing it
    torch.set_num_threads(1)  # per-thread with OpenMP: ops in this worker run single-threaded
    barrier.wait()


def _worker_check() -> bool:
    return torch.get_num_threads() == 1


def _cpu_pool(workers: int | None = None) -> ThreadPoolExecutor | None:
    """Worker threads whose torch ops run single-threaded, one per intra-op thread of the caller.

    Why: SHOT is hundreds of small tensor ops per chunk. With intra-op (OpenMP) threads each op
    ends in a barrier, and on a shared machine where another process holds a core the barriers
    turn 2 threads into a 5-10x slowdown. Independent query chunks on single-threaded workers
    scale on an idle machine and degrade gracefully on a busy one. ``torch.set_num_threads(1)``
    only changes the calling thread's OpenMP setting; the global default for new threads is
    restored right after. Returns None (run in the caller) when the caller uses one thread or
    the backend does not keep the setting per thread.
    """
    global _POOL
    caller = torch.get_num_threads()
    workers = caller if workers is None else int(workers)
    if workers <= 1 or getattr(_IN_WORKER, "flag", False):
        return None
    with _POOL_LOCK:
        if _POOL is not None and _POOL[0] == workers:
            return _POOL[1]
        if _POOL is not None and _POOL[1] is not None:
            _POOL[1].shutdown(wait=False)
        barrier = threading.Barrier(workers)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="shot", initializer=_worker_init,
                                  initargs=(barrier,))
        started = [pool.submit(_worker_check) for _ in range(workers)]
        [f.result() for f in started]
        torch.set_num_threads(caller)  # restore the process default the workers overwrote
        ok = all(f.result() for f in [pool.submit(_worker_check) for _ in range(4 * workers)])
        if not ok:
            pool.shutdown(wait=False)
            pool = None
        _POOL = (workers, pool)
        return pool


def _run_blocks(n: int, block: int, device: torch.device, fn: Callable[[int, int], None],
                workers: int | None = None) -> None:
    """``fn(start, stop)`` for consecutive blocks of ``range(n)``; on CPU the blocks are spread
    over ``workers`` :func:`_cpu_pool` threads, on CUDA they run in order in the calling thread."""
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    ranges = [(a, min(a + block, n)) for a in range(0, n, block)]
    pool = _cpu_pool(workers) if device.type == "cpu" and len(ranges) > 1 else None
    if pool is None:
        for a, b in ranges:
            fn(a, b)
        return
    for f in [pool.submit(fn, a, b) for a, b in ranges]:
        f.result()
