"""Running chunks watched: a lease with a heartbeat per chunk, and a watchdog in every worker that hands
the chunks of dead workers to the living.

* :class:`ChunkLease` holds a chunk's lease (:meth:`worker.batches.BatchBook.hold`) while it runs, and a
  daemon thread renews it every ``DEFECTSCAN_HEARTBEAT_S`` (default 10 s). A process that is killed
  (SIGKILL, out of memory, a node lost, the hard time limit) stops beating.
* :class:`Watchdog`, a thread in every worker's main process, looks at the running batches' leases every
  ``DEFECTSCAN_SWEEP_S`` (default 15 s). A lease that has not beaten for ``DEFECTSCAN_DEAD_AFTER_S``
  (default 60 s) is taken over: ``HDEL`` of its field succeeds for exactly one watchdog, which hands the
  chunk's keys to ``resume`` (re-send what is not recorded yet). Without this, a dead worker's chunk
  would wait for the broker's visibility timeout (40 minutes with the default limits).

A chunk that merely runs long keeps beating and is left alone; ``defectscan status`` shows it as overdue
once it passes its soft time limit. All times are Redis's (``TIME``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from defectscan.worker.batches import BatchBook, Lease, connect, running_batches, server_time
from defectscan.worker.settings import settings

log = logging.getLogger("defectscan.watch")


def heartbeat_s() -> float:
    return settings().heartbeat_s


def dead_after_s() -> float:
    return settings().dead_after_s


def sweep_s() -> float:
    return settings().sweep_s


def is_dead(lease: Lease, now: float) -> bool:
    return now - lease.beat > dead_after_s()


def is_overdue(lease: Lease, now: float) -> bool:
    return lease.limit_s > 0 and now - lease.started > lease.limit_s


class ChunkLease:
    """``with ChunkLease(...):`` holds a lease and beats for it; released on leaving, unless
    :meth:`abandon` was called (the chunk could not be handed back to the broker: let the watchdog)."""

    def __init__(self, book: BatchBook, lease: Lease) -> None:
        self.book = book
        self.lease = lease
        self._stop = threading.Event()
        self._abandoned = False
        # the beats use their own client that gives up quickly: a missed beat is retried at the next one
        self._beats = BatchBook(book.batch_id, connect(wait_s=heartbeat_s()))
        self._thread = threading.Thread(target=self._beat, name="lease-beat", daemon=True)

    def __enter__(self) -> ChunkLease:
        self.book.hold(self.lease)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(heartbeat_s()):
            try:
                if not self._beats.beat(self.lease.task_id):
                    log.warning("chunk %s: lease taken over by a watchdog", self.lease.task_id)
                    return
            except Exception as exc:  # Redis away: the next beat tries again
                log.warning("chunk %s: heartbeat failed (%s)", self.lease.task_id, type(exc).__name__)

    def abandon(self) -> None:
        self._abandoned = True

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if not self._abandoned:
            try:
                self.book.release(self.lease.task_id)
            except Exception as error:  # the watchdog takes the lease over later; the work is recorded
                log.warning("chunk %s: lease not released (%s)", self.lease.task_id, type(error).__name__)


Resume = Callable[[Lease, str], None]
"""Called with a dead chunk's lease and the batch id: re-send (or settle) what it left undone."""


def sweep(client: Any, resume: Resume) -> int:
    """One look at every running batch's leases; the dead ones are taken over. Returns how many."""
    taken = 0
    now = server_time(client)
    for batch_id in running_batches(client):
        book = BatchBook(batch_id, client)
        for lease in book.leases():
            if is_dead(lease, now) and book.release(lease.task_id):
                log.warning(
                    "batch %s: chunk %s of %d images on %s stopped beating %.0f s ago; resuming it",
                    batch_id,
                    lease.task_id,
                    len(lease.keys),
                    lease.worker,
                    now - lease.beat,
                )
                resume(lease, batch_id)
                taken += 1
    return taken


class Watchdog:
    """A daemon thread that sweeps every ``sweep_s`` seconds until :meth:`stop`."""

    def __init__(self, resume: Resume) -> None:
        self.resume = resume
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunk-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def _run(self) -> None:
        client = connect(wait_s=sweep_s())
        while not self._stop.wait(sweep_s()):
            try:
                sweep(client, self.resume)
            except Exception as exc:  # Redis away, storage away: the next sweep tries again
                log.warning("watchdog sweep failed: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        self._stop.set()
