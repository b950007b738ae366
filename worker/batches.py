"""Batch bookkeeping in Redis: which images of a batch are done, which failed, which chunks are running,
and who finalizes.

Per batch, under ``defectscan:batch:<id>:``, a hash ``results`` maps each input's *item key*
(:mod:`worker.item_keys`) to its verdict (``ok``, ``defect`` or ``error``) and ``total`` holds the number
of inputs. Recording is an ``HSET``, made as each image's files are written, so a retried, re-sent or
duplicated chunk changes nothing and a chunk that dies loses only the image it was on; the batch is
complete when the hash holds ``total`` keys. The chunk that completes it (or any later duplicate) tries
``SET finalizing NX``: exactly one wins and enqueues the finalize task. Keys expire after ``ttl``
(14 days by default); the results themselves are in storage.

**Leases.** A running chunk holds a lease, a field of the batch's ``chunks`` hash (its task id ->
``{keys, worker, queue, started, beat}``), and renews ``beat`` every few seconds
(:mod:`worker.chunk_watch`). Times are the Redis server's (``TIME``), so workers' clocks do not matter.

**Waiting for Redis.** Every client made by :func:`connect` retries a command that meets a lost
connection with exponential backoff (redis-py's ``Retry``) for up to ``wait_s`` seconds: a worker rides
through a Redis restart of up to 10 minutes by default (``DEFECTSCAN_REDIS_WAIT_S``) without losing the
chunk it is recording; the command-line tools wait less and then say that the broker is unavailable.

Redis is the bookkeeping store whatever the broker: ``DEFECTSCAN_REDIS_URL``, by default the broker's
URL when that is Redis (:func:`worker.app.bookkeeping_url`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from defectscan.worker.app import bookkeeping_url
from defectscan.worker.settings import settings

PREFIX = "defectscan:batch:"
RUNNING = "defectscan:running-batches"  # batches that hold leases, for the watchdog
TTL_S = 14 * 24 * 3600
BACKOFF_CAP_S = 5.0


@dataclass(frozen=True)
class Lease:
    """A running chunk: its task id, keys, worker, and the Redis times it started and last beat."""

    task_id: str
    keys: list[str]
    worker: str
    queue: str | None
    started: float
    beat: float
    limit_s: float = 0.0  # the chunk's soft time limit
    location: str = ""  # the batch folder
    attempt: int = 0  # how often the chunk's keys were resumed after a death

    @classmethod
    def parse(cls, task_id: str, raw: bytes | str) -> Lease:
        doc = json.loads(raw)
        return cls(task_id=task_id, **doc)

    def dump(self) -> str:
        doc = {k: v for k, v in self.__dict__.items() if k != "task_id"}
        return json.dumps(doc)


@dataclass(frozen=True)
class BatchCounts:
    total: int
    done: int
    failed: int
    leases: list[Lease] = field(default_factory=list)
    now: float = 0.0

    @property
    def pending(self) -> int:
        return max(self.total - self.done - self.failed, 0)

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.pending == 0


def default_wait_s() -> float:
    return settings().redis_wait_s


def connect(url: str | None = None, wait_s: float | None = None) -> Any:
    """A Redis client that retries a command through a lost connection for about ``wait_s`` seconds."""
    wait = default_wait_s() if wait_s is None else wait_s
    retries = int(wait / BACKOFF_CAP_S) + 3 if wait > 0 else 0
    return redis.Redis.from_url(
        url or bookkeeping_url(),
        retry=Retry(ExponentialWithJitterBackoff(cap=BACKOFF_CAP_S, base=0.25), retries),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=30,
    )


def server_time(client: Any) -> float:
    return _seconds(client.time())


def _seconds(time_reply: tuple[int, int]) -> float:
    """Redis's ``TIME`` reply (seconds, microseconds) in seconds."""
    seconds, micros = time_reply
    return float(seconds) + float(micros) / 1e6


class BatchBook:
    def __init__(self, batch_id: str, client: Any = None, ttl: int = TTL_S) -> None:
        self.batch_id = batch_id
        self.client = client if client is not None else connect()
        self.ttl = ttl

    def _key(self, name: str) -> str:
        return f"{PREFIX}{self.batch_id}:{name}"

    def keys(self) -> list[str]:
        return [self._key(n) for n in ("total", "results", "finalizing", "finalized", "chunks")]

    def start(self, total: int, known: Mapping[str, str] | None = None) -> None:
        """Set the number of inputs, and record verdicts that already exist (a rerun)."""
        pipe = self.client.pipeline()
        pipe.set(self._key("total"), total, ex=self.ttl)
        if known:
            pipe.hset(self._key("results"), mapping=dict(known))
        pipe.expire(self._key("results"), self.ttl)
        pipe.execute()

    def record(self, results: Mapping[str, str]) -> tuple[int, int]:
        """Record ``{item key: verdict}``; ``(inputs recorded, total)`` after it.

        Constant work per call (``HLEN``), however large the batch; :meth:`counts` reads every value."""
        pipe = self.client.pipeline()
        if results:
            pipe.hset(self._key("results"), mapping=dict(results))
        pipe.expire(self._key("results"), self.ttl)
        pipe.hlen(self._key("results"))
        pipe.get(self._key("total"))
        *_, recorded, total = pipe.execute()
        return int(recorded), int(total or 0)

    def recorded(self, item_keys: Sequence[str]) -> set[str]:
        """Which of ``item_keys`` have a verdict on record."""
        if not item_keys:
            return set()
        values = self.client.hmget(self._key("results"), list(item_keys))
        return {k for k, v in zip(item_keys, values, strict=True) if v is not None}

    def results(self) -> dict[str, str]:
        """``{item key: verdict}`` on record."""
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self._key("results")).items()}

    def counts(self) -> BatchCounts:
        pipe = self.client.pipeline()
        pipe.get(self._key("total"))
        pipe.hvals(self._key("results"))
        pipe.hgetall(self._key("chunks"))
        pipe.time()
        total, values, chunks, time_reply = pipe.execute()
        verdicts = Counter(v.decode() for v in values)
        leases = [Lease.parse(k.decode(), v) for k, v in chunks.items()]
        done = verdicts["ok"] + verdicts["defect"]
        return BatchCounts(int(total or 0), done, verdicts["error"], leases, _seconds(time_reply))

    # leases of running chunks

    def hold(self, lease: Lease) -> None:
        """Hold ``lease`` (its start and beat set to now)."""
        now = server_time(self.client)
        lease = replace(lease, started=now, beat=now)
        task_id = lease.task_id
        pipe = self.client.pipeline()
        pipe.hset(self._key("chunks"), task_id, lease.dump())
        pipe.expire(self._key("chunks"), self.ttl)
        pipe.sadd(RUNNING, self.batch_id)
        pipe.execute()

    def beat(self, task_id: str) -> bool:
        """Renew a lease; False when it is gone (released, or taken over by the watchdog)."""
        raw = self.client.hget(self._key("chunks"), task_id)
        if raw is None:
            return False
        lease = Lease.parse(task_id, raw)
        renewed = replace(lease, beat=server_time(self.client))
        self.client.hset(self._key("chunks"), task_id, renewed.dump())
        return True

    def release(self, task_id: str) -> bool:
        """Drop a lease; True for exactly one caller (the chunk itself, or the watchdog taking it over)."""
        return bool(self.client.hdel(self._key("chunks"), task_id))

    def leases(self) -> list[Lease]:
        return [Lease.parse(k.decode(), v) for k, v in self.client.hgetall(self._key("chunks")).items()]

    # finalizing

    def claim_finalize(self) -> bool:
        """True for exactly one caller, the one that will finalize."""
        return bool(self.client.set(self._key("finalizing"), 1, nx=True, ex=self.ttl))

    def finalizing(self) -> bool:
        return bool(self.client.exists(self._key("finalizing")))

    def release_finalize(self) -> None:
        """Let a later caller finalize (after a failed attempt)."""
        self.client.delete(self._key("finalizing"))

    def mark_finalized(self) -> None:
        pipe = self.client.pipeline()
        pipe.set(self._key("finalized"), 1, ex=self.ttl)
        pipe.srem(RUNNING, self.batch_id)
        pipe.execute()

    def finalized(self) -> bool:
        return bool(self.client.exists(self._key("finalized")))

    def known(self) -> bool:
        """Whether the broker has this batch (its ``total``, set when it is enqueued; a batch may have
        no image)."""
        return bool(self.client.exists(self._key("total")))

    def forget(self) -> None:
        self.client.delete(*self.keys())
        self.client.srem(RUNNING, self.batch_id)


def running_batches(client: Any) -> list[str]:
    return sorted(b.decode() for b in client.smembers(RUNNING))
