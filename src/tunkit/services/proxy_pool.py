"""A thread pool that never queues: each call runs at once on an idle or a new thread.

Contract: :meth:`ElasticPool.submit` never blocks and never delays a call behind another
(a long blocking dial cannot hold up the next connection); finished threads wait
:data:`IDLE_THREAD_SECONDS` for more work, so a steady stream of calls reuses them instead of
starting a thread per call.  Exceptions of a call are logged, never propagated.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("tunkit.proxy")

IDLE_THREAD_SECONDS = 30.0


class ElasticPool:
    """Runs each submitted call at once on an idle thread, starting a new thread if none is
    idle (so a long relay never delays another connection).  Idle threads exit after
    :data:`IDLE_THREAD_SECONDS`; reusing them saves a thread start per connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
            worker.task = (fn, args)
            threading.Thread(target=worker.loop, daemon=True, name=self.name).start()
        else:
            worker.task = (fn, args)
            worker.ready.release()


class _Worker:
    def __init__(self, pool: ElasticPool) -> None:
        self.pool = pool
        self.ready = threading.Semaphore(0)
        self.task: tuple[Callable[..., object], tuple[object, ...]] | None = None

    def loop(self) -> None:
        pool = self.pool
        while True:
            task, self.task = self.task, None
            if task is not None:
                try:
                    task[0](*task[1])
                except Exception:
                    log.exception("%s worker failed", pool.name)
            with pool._lock:
                pool._idle.append(self)
            if not self.ready.acquire(timeout=IDLE_THREAD_SECONDS):
                with pool._lock:
                    if self in pool._idle:
                        pool._idle.remove(self)
                        return
                self.ready.acquire()  # a submitter took us just before the timeout
