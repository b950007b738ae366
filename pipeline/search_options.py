"""How the template search runs (:class:`SegmentOptions`) and the ranges its options are written in:
no OpenCV here, so commands that only parse options or read a batch's request start fast.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, model_validator

from defectscan.pipeline.errors import InvalidArgumentError


def parse_range(text: str, name: str = "range") -> tuple[float, ...]:
    """Parse ``start:stop:step`` (inclusive), a comma list, or one number.

    Example:
        >>> parse_range("-2:2:1")
        (-2.0, -1.0, 0.0, 1.0, 2.0)
        >>> parse_range("0.95:1.05:0.05")
        (0.95, 1.0, 1.05)
    """
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError("expected start:stop:step")
            start, stop, step = parts
            if step <= 0 or stop < start:
                raise ValueError("needs step > 0 and stop >= start")
            count = math.floor((stop - start) / step + 1e-9) + 1
            if count > 1000:
                raise ValueError(f"{count} values is too many")
            return tuple(round(start + i * step, 9) for i in range(count))
        values = tuple(sorted(float(v) for v in text.split(",")))
    except ValueError as exc:
        raise InvalidArgumentError(name, f"cannot read {text!r} as a range ({exc})") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise InvalidArgumentError(name, f"cannot read {text!r} as a range")
    return values


class SegmentOptions(BaseModel):
    """How to search. ``angles`` in degrees, ``scales`` as factors of the template's size. Stored in a
    batch's ``batch.json`` (lists in JSON, tuples here)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    angles: tuple[float, ...] = parse_range("-5:5:1")
    scales: tuple[float, ...] = (1.0,)
    min_score: float = 0.5
    max_instances: int = 64
    nms_iou: float = 0.2
    pyramid: bool = True
    min_coarse_side: int = 40

    @model_validator(mode="after")
    def _check(self) -> SegmentOptions:
        if not self.angles or not self.scales:
            raise InvalidArgumentError("options", "angles and scales need at least one value each")
        if min(self.scales) <= 0:
            raise InvalidArgumentError("scales", "scales must be positive")
        if max(abs(a) for a in self.angles) > 45:
            raise InvalidArgumentError("angles", "angles beyond +-45 degrees are not supported")
        if not 0 < self.min_score <= 1:
            raise InvalidArgumentError("min_score", "must be in (0, 1]")
        if self.max_instances < 1:
            raise InvalidArgumentError("max_instances", "must be at least 1")
        return self
