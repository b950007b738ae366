"""The local ``defectscan inspect``: every image under a folder (or every pair of a pairs CSV), inspected
with :mod:`pipeline.inspection`, verdicts and pictures written beside each other under ``OUT`` by
:func:`worker.results.write_inspection` (the workers write the same files), and ``summary.json`` last.
An image that fails gets an ``error`` verdict and the run goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.errors import DefectscanError
from pipeline.inspection import Inspection
from pipeline.verdict import ErrorInfo, ImageInfo, ModelInfo, Verdict
from worker.results import OutputOptions, Summary, write_inspection
from worker.storage import Storage, read_local


def run_inspection(
    items: Sequence[tuple[str, Path]],
    inspect: Callable[[bytes, str], Inspection],
    model: ModelInfo,
    out: Storage,
    options: OutputOptions | None = None,
    on_image: Callable[[str, Verdict], None] | None = None,
) -> Summary:
    """Inspect ``(key, path)`` items; write each result, then the summary."""
    summary = Summary()
    for key, path in items:
        try:
            data = read_local(path)
        except DefectscanError as exc:
            result = Inspection(
                Verdict(
                    image=ImageInfo(key=key), model=model, verdict="error", error=ErrorInfo(**exc.as_dict())
                )
            )
        else:
            result = inspect(data, key)
        write_inspection(out, key, result, options or OutputOptions())
        summary.add(result.verdict)
        if on_image is not None:
            on_image(key, result.verdict)
    out.put("summary.json", summary.to_json(), "application/json")
    return summary
