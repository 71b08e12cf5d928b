"""How the compiled CPU kernels (:mod:`~ukpgan_ros.features.shot_cpu`,
:mod:`~ukpgan_ros.features.normals_cpu` and the helpers they share in
:mod:`~ukpgan_ros.features._grid` and :mod:`~ukpgan_ros.features._eig3`) are compiled and run.

Compilation: the kernel modules import neither numba nor LLVM; each lists its kernels
(``_INLINED``: inlined into their callers in numba IR, so the hot loops call no functions;
``_JITTED``) and the modules whose kernels it calls (``_KERNEL_DEPS``). On first use
:func:`compile_module` replaces them, helpers first, by numba dispatchers: a kernel looks up the
names it calls as globals of its own module when it is compiled, so the names a module imported
from a helper module are rebound to the helper's dispatchers too. Kernels compile in ~5-8 s and
are cached in ``__pycache__`` (``cache=True``), so later processes load them in well under a
second. numba keys a cached kernel on its own source file only, so a kernel calling an edited
helper of another file would load stale machine code: the kernels' cache entries are keyed on
the sources of their module and of its ``_KERNEL_DEPS`` instead (:func:`_family_locator`).

Threads: queries run in blocks of ``_BLOCK`` handed out one at a time to a small pool of Python
threads; the kernels release the GIL, so a thread slowed down by another process just takes
fewer blocks. Not numba's ``parallel=True``/``prange``: its parfor lowering added 7-11 s to the
first compile, and its threading layer is a process-wide choice (an old TBB next to torch,
OpenMP runtimes, workqueue aborting on concurrent calls).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np

__all__ = ["compile_module", "run_blocks", "check_threads"]

_BLOCK = 64  # queries per scheduling unit
_OPTIONS = dict(cache=True, fastmath=False, nogil=True, error_model="numpy")
_LOCK = threading.RLock()
_COMPILED: set[str] = set()
_POOL: tuple[int, ThreadPoolExecutor] | None = None
_SOURCES: dict[str, tuple[str, ...]] = {}  # kernel module -> its source file and its deps' files
_LOCATOR: list = []


def compile_module(module: ModuleType) -> None:
    """Replace the kernels of ``module`` (and first those of its ``_KERNEL_DEPS``) by numba
    dispatchers, once per process; numba is imported here."""
    if module.__name__ in _COMPILED:
        return
    with _LOCK:
        if module.__name__ in _COMPILED:
            return
        import numba

        _family_locator()
        _SOURCES[module.__name__] = _sources(module)
        g = vars(module)
        for dep in getattr(module, "_KERNEL_DEPS", ()):
            compile_module(dep)
            for name in dep._INLINED + dep._JITTED:
                kernel = vars(dep)[name]
                if g.get(name) is kernel.py_func:  # imported from ``dep``: take its dispatcher
                    g[name] = kernel
        for name in module._INLINED:
            g[name] = numba.njit(inline="always", **_OPTIONS)(g[name])
        for name in module._JITTED:  # helpers first: their callers look them up when compiling
            g[name] = numba.njit(**_OPTIONS)(g[name])
        _COMPILED.add(module.__name__)


def _sources(module: ModuleType) -> tuple[str, ...]:
    """The source files whose code ``module``'s kernels compile: its own and its deps', recursively."""
    files = [module.__file__]
    for dep in getattr(module, "_KERNEL_DEPS", ()):
        files += [f for f in _sources(dep) if f not in files]
    return tuple(files)


def _family_locator() -> None:
    """Register (once) a numba cache locator for the kernel modules: numba's own in-tree
    ``__pycache__`` location, with a freshness stamp made of the hashes of every file in
    ``_SOURCES`` of the kernel's module instead of its own file's only. Uses numba's locator
    list (``CacheImpl._locator_classes``, not public API): where that is missing, the plain
    per-file stamp applies."""
    if _LOCATOR:
        return
    from numba.core import caching, config

    class _FamilyLocator(caching.InTreeCacheLocator):
        @classmethod
        def from_function(cls, py_func, py_file):
            files = _SOURCES.get(getattr(py_func, "__module__", ""))
            if files is None or config.CACHE_DIR:  # not ours, or the user chose a cache folder
                return None
            self = super().from_function(py_func, py_file)
            if self is not None:
                self._files = files
            return self

        def get_source_stamp(self):
            return tuple(hashlib.sha256(open(f, "rb").read()).hexdigest() for f in self._files)

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)  # numba >= 0.61: public name
    locators = getattr(impl, "_locator_classes", None)
    if isinstance(locators, list):
        locators.insert(0, _FamilyLocator)
    _LOCATOR.append(_FamilyLocator)


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _pool(threads: int) -> ThreadPoolExecutor:
    """A persistent pool of at least ``threads`` workers."""
    global _POOL
    with _LOCK:
        if _POOL is None or _POOL[0] < threads:
            if _POOL is not None:
                _POOL[1].shutdown(wait=False)
            _POOL = (threads, ThreadPoolExecutor(threads, thread_name_prefix="cpu_kernels"))
        return _POOL[1]


def run_blocks(kernel, args, nq: int, threads: int) -> None:
    """``kernel`` over all queries: blocks of ``_BLOCK`` queries handed out one at a time to
    ``threads`` threads (the kernel releases the GIL), so a thread slowed down by another
    process just takes fewer blocks."""
    n_blocks = (nq + _BLOCK - 1) // _BLOCK
    threads = min(threads, n_blocks)
    if threads <= 1:
        kernel(0, nq, *args)
        return
    counter = itertools.count()  # next() is atomic under the GIL

    def work() -> None:
        while True:
            b = next(counter)
            if b >= n_blocks:
                return
            kernel(b * _BLOCK, min(nq, (b + 1) * _BLOCK), *args)

    for f in [_pool(threads).submit(work) for _ in range(threads)]:
        f.result()


def check_threads(threads) -> int:
    if threads is None:
        return _default_threads()
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) \
            or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return int(threads)
