"""Batch bookkeeping in Redis: which images of a batch are done, which failed, and who finalizes.

Per batch, under ``defectscan:batch:<id>:``, a hash ``results`` maps each input key to its verdict
(``ok``, ``defect`` or ``error``) and ``total`` holds the number of inputs. Recording is an ``HSET``, so a
retried or duplicated chunk changes nothing; the batch is complete when the hash holds ``total`` keys.
The chunk that completes it (or any later duplicate) tries ``SET finalizing NX``: exactly one wins and
enqueues the finalize task. No chord, no per-chunk counters that a retry could double-count. Keys
expire after ``ttl`` (14 days by default); the results themselves are in storage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker.app import broker_url

PREFIX = "defectscan:batch:"
TTL_S = 14 * 24 * 3600


@dataclass(frozen=True)
class BatchCounts:
    total: int
    done: int
    failed: int

    @property
    def pending(self) -> int:
        return max(self.total - self.done - self.failed, 0)

    @property
    def finished(self) -> bool:
        return self.total > 0 and self.pending == 0


def connect(url: str | None = None) -> Any:
    return redis.Redis.from_url(url or broker_url())


class BatchBook:
    def __init__(self, batch_id: str, client: Any = None, ttl: int = TTL_S) -> None:
        self.batch_id = batch_id
        self.client = client if client is not None else connect()
        self.ttl = ttl

    def _key(self, name: str) -> str:
        return f"{PREFIX}{self.batch_id}:{name}"

    def keys(self) -> list[str]:
        return [self._key(n) for n in ("total", "results", "finalizing", "finalized")]

    def start(self, total: int, known: Mapping[str, str] | None = None) -> None:
        """Set the number of inputs, and record verdicts that already exist (a rerun)."""
        pipe = self.client.pipeline()
        pipe.set(self._key("total"), total, ex=self.ttl)
        if known:
            pipe.hset(self._key("results"), mapping=dict(known))
        pipe.expire(self._key("results"), self.ttl)
        pipe.execute()

    def record(self, results: Mapping[str, str]) -> tuple[int, int]:
        """Record ``{input key: verdict}`` for a chunk; ``(inputs recorded, total)`` after it.

        Constant work per chunk (``HLEN``), however large the batch; :meth:`counts` reads every value."""
        pipe = self.client.pipeline()
        if results:
            pipe.hset(self._key("results"), mapping=dict(results))
        pipe.expire(self._key("results"), self.ttl)
        pipe.hlen(self._key("results"))
        pipe.get(self._key("total"))
        *_, recorded, total = pipe.execute()
        return int(recorded), int(total or 0)

    def results(self) -> dict[str, str]:
        """``{input key: verdict}`` on record."""
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self._key("results")).items()}

    def counts(self) -> BatchCounts:
        total = int(self.client.get(self._key("total")) or 0)
        verdicts = Counter(v.decode() for v in self.client.hvals(self._key("results")))
        return BatchCounts(total, verdicts["ok"] + verdicts["defect"], verdicts["error"])

    def claim_finalize(self) -> bool:
        """True for exactly one caller, the one that will finalize."""
        return bool(self.client.set(self._key("finalizing"), 1, nx=True, ex=self.ttl))

    def release_finalize(self) -> None:
        """Let a later caller finalize (after a failed attempt)."""
        self.client.delete(self._key("finalizing"))

    def mark_finalized(self) -> None:
        self.client.set(self._key("finalized"), 1, ex=self.ttl)

    def finalized(self) -> bool:
        return bool(self.client.exists(self._key("finalized")))

    def forget(self) -> None:
        self.client.delete(*self.keys())
