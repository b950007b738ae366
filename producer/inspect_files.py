"""The local ``defectscan inspect``: every image under a folder (or every pair of a pairs CSV), inspected
with :mod:`pipeline.inspection`, verdicts and pictures written beside each other under ``OUT`` by
:func:`worker.results.write_inspection` (the workers write the same files), then ``report.html``
(:mod:`worker.report`), and ``summary.json`` last.

Every input gets exactly one verdict: a failure to read, decode, inspect or write one image is that
image's ``error`` verdict (with its code), and the run goes on to the next and always ends with the
summary.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

from defectscan.pipeline.errors import DefectscanError
from defectscan.pipeline.inspection import Inspection
from defectscan.pipeline.outputs import OutputOptions
from defectscan.pipeline.verdict import ModelInfo, Verdict, error_verdict
from defectscan.worker.report import ModelFacts, write_report
from defectscan.worker.results import SUMMARY, Summary, write_inspection
from defectscan.worker.storage import Storage, read_local

log = logging.getLogger("defectscan.inspect")


Reads = Iterable[tuple[str, Callable[[], bytes]]]
InspectMany = Callable[[Reads], Iterator[Inspection]]


def one_at_a_time(inspect: Callable[[bytes, str], Inspection]) -> InspectMany:
    """An :data:`InspectMany` from a function of one image (the pairs mode)."""

    def many(reads: Reads) -> Iterator[Inspection]:
        for key, read in reads:
            yield inspect(read(), key)

    return many


def _inspections(
    items: Sequence[tuple[str, Path]], inspect: InspectMany, model: ModelInfo
) -> Iterator[Inspection]:
    """One inspection per item, in order, whatever ``inspect`` raises: an exception it lets out is the
    image's error verdict, and the items after it are inspected afresh."""
    todo = deque((key, partial(read_local, path)) for key, path in items)
    while todo:
        results = inspect(list(todo))
        while todo:
            key, _ = todo[0]
            try:
                result = next(results)
            except Exception as exc:
                if not isinstance(exc, DefectscanError):
                    log.exception("inspecting %r failed", key)
                todo.popleft()
                yield Inspection(error_verdict(key, model, exc))
                break
            todo.popleft()
            yield result


def run_inspection(
    items: Sequence[tuple[str, Path]],
    inspect: InspectMany,
    model: ModelInfo,
    out: Storage,
    options: OutputOptions | None = None,
    on_image: Callable[[str, Verdict], None] | None = None,
    facts: ModelFacts | None = None,
) -> Summary:
    """Inspect ``(key, path)`` items (``inspect`` reads them, in order); write each result, then
    ``report.html``, then the summary.

    An image's files are encoded and written on a second thread while the next images are inspected
    (PNG encoding releases the GIL); verdicts are counted in input order."""
    summary = Summary()
    verdicts: list[Verdict] = []
    options = options or OutputOptions()

    def settle(key: str, result: Inspection, written: Future[Verdict]) -> None:
        try:
            verdict = written.result()
        except Exception as exc:  # not even the error verdict could be written: the summary says so
            log.exception("writing the results of %r failed", key)
            verdict = error_verdict(result.verdict.image, model, exc)
        summary.add(verdict)
        verdicts.append(verdict)
        if on_image is not None:
            on_image(key, verdict)

    pending: deque[tuple[str, Inspection, Future[Verdict]]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        for (key, _), result in zip(items, _inspections(items, inspect, model), strict=True):
            pending.append((key, result, writer.submit(write_inspection, out, key, result, options)))
            while len(pending) > 1:  # one image's files in flight beside the next inspection
                settle(*pending.popleft())
        while pending:
            settle(*pending.popleft())
    write_report(out, verdicts, summary, facts or ModelFacts(version=model.version, method=model.method))
    out.put(SUMMARY, summary.to_json(), "application/json")
    return summary
